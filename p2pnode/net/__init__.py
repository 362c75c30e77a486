"""Transport bridge: trio over the iroh bindings, endpoint, ALPN router, framing."""
