"""One registry offers each executor exactly while it is available: no per-executor special case."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import get_args

import pytest
import trio
from click.testing import CliRunner

from p2pnode.cli import cli
from p2pnode.executors.base import ExecutorKind
from p2pnode.executors.flawless import FlawlessClient, FlawlessExecutor
from p2pnode.executors.registry import ExecutorRegistry
from p2pnode.executors.wasm import WasiExecutor
from tests.fake_flawless import reserved_socket, serve_fake_flawless


async def until(condition: Callable[[], bool], what: str) -> None:
    with trio.move_on_after(10):
        while not condition():
            await trio.sleep(0.01)
    assert condition(), f"timed out waiting until {what}"


async def test_offers_each_executor_exactly_while_it_answers(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    sock = reserved_socket()  # bound, not listening: a probe is refused until the fake serves
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with FlawlessClient(url) as client:
        registry = ExecutorRegistry(
            [WasiExecutor(), FlawlessExecutor(client)], probe_interval_s=0.02
        )
        await nursery.start(registry.run)
        assert set(registry.offered) == {"wasi"}  # offered by the time the registry started
        with caplog.at_level(logging.INFO, logger="p2pnode.executors"):
            async with serve_fake_flawless(sock=sock):
                await until(lambda: "flawless" in registry.offered, "flawless offered")
            await until(lambda: "flawless" not in registry.offered, "flawless withdrawn")
        assert set(registry.offered) == {"wasi"}
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [
            "executor flawless available: taking flawless jobs",
            "executor flawless stopped answering: no longer taking flawless jobs",
        ]


def test_cli_offers_every_executor_kind() -> None:
    result = CliRunner().invoke(cli, ["job", "submit", "--executor", "nope", "x.wat"])
    assert result.exit_code == 2
    assert all(kind in result.output for kind in get_args(ExecutorKind))
