"""What every benchmark script shares, so that each one holds only its measurement."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose --help is the script's docstring as written (its usage lines)."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def random_file(path: Path, mib: int) -> Path:
    """`mib` MiB of incompressible bytes at `path`, written a MiB at a time (constant memory)."""
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    return path
