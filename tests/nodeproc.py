"""Real `p2pnode start` processes for scenario tests, each with its own data folder and free
ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

NODE_START_TIMEOUT_S = 30


class NodeProcess:
    """A node in its own process. Reads the node id, API URL and ticket it prints on start."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        bind: str = "127.0.0.1:0",
        prefix: tuple[str, ...] = (),
    ) -> None:
        """`prefix` runs the node and its CLI calls inside something, e.g. `ip netns exec NS`."""
        self.data_dir = data_dir
        self.prefix = prefix
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "p2pnode", *start_args(data_dir, *extra, bind=bind)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        fields: dict[str, str] = {}
        while len(fields) < 3:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(
                    f"node exited early ({self.proc.wait()}): {self.proc.stderr.read()}"
                )  # type: ignore[union-attr]
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        self.id = fields["node id"]
        self.api = fields["local API"]
        self.ticket = fields["join ticket"]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(
            "--api", self.api, "--data", str(self.data_dir), *args, check=check, prefix=self.prefix
        )

    @property
    def headers(self) -> dict[str, str]:
        """What a direct HTTP call to this node's API needs: its token."""
        return {"Authorization": f"Bearer {(self.data_dir / 'api-token').read_text().strip()}"}

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=NODE_START_TIMEOUT_S)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def start_args(data_dir: Path, *extra: str, bind: str = "127.0.0.1:0") -> list[str]:
    """`p2pnode start` as scenario tests run it: a free API port, loopback, no relay."""
    return [
        "start",
        "--data",
        str(data_dir),
        "--http-port",
        "0",
        "--bind",
        bind,
        "--relay",
        "disabled",
        *extra,
    ]


def run_start(
    data_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A `p2pnode start` that should exit by itself (a join that fails), run to its end."""
    return run_cli(*start_args(data_dir, *extra), check=False, env=env)


def run_cli(
    *args: str,
    check: bool = True,
    input: str | None = None,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "p2pnode", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"p2pnode {' '.join(args)} failed ({result.returncode}): {result.stderr}"
        )
    return result


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a condition no event announces (another process's state), up to a bounded deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def submit_job(node: NodeProcess, *args: str) -> str:
    """`p2pnode job submit ARGS` on `node`: the new job's id."""
    return node.cli("job", "submit", *args).stdout.strip().splitlines()[0]
