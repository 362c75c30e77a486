"""p2pnode: a peer-to-peer compute node on iroh, trio and WebAssembly."""

__version__ = "0.1.0"
