"""p2pnode: a peer-to-peer compute node on iroh, trio and WebAssembly."""

from pathlib import Path

__version__ = "0.2.0"

DEFAULT_DATA = Path("data")
"""The data folder: the node's key, cluster secret and API token (DATA/api-token, which CLI
commands read)."""
