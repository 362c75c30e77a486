"""Local HTTP API for the CLI and for people."""
