"""Content-addressed blob store and the verified peer-to-peer blob protocol."""
