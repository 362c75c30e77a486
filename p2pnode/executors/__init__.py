"""Executors: the local Flawless server over HTTP, and the embedded WASI runner."""
