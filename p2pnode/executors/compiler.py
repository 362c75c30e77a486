"""Compiles one WebAssembly binary (on stdin) to wasmtime's serialized machine code (a file).

The embedded runner starts this as a process of its own, ``python compiler.py SETTINGS DEST
LIMIT`` (SETTINGS: the engine's settings as JSON; LIMIT: bytes of address space): wasmtime cannot
interrupt a compilation, but the runner can kill a process that exceeds the compile time limit, a
hostile module cannot make it take more memory than LIMIT (the allocation fails, the process
aborts), and a compilation's peak memory goes back to the system when it ends. It imports nothing
but wasmtime, so it starts fast. Exit status 1, with wasmtime's message on stderr: the module is
invalid.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import wasmtime


def main() -> int:
    settings, dest = json.loads(sys.argv[1]), Path(sys.argv[2])
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    config = wasmtime.Config()
    for setting, value in settings.items():
        setattr(config, setting, value)
    try:
        module = wasmtime.Module(wasmtime.Engine(config), sys.stdin.buffer.read())
    except wasmtime.WasmtimeError as exc:
        sys.stderr.write(str(exc))
        return 1
    dest.write_bytes(module.serialize())
    return 0


if __name__ == "__main__":
    sys.exit(main())
