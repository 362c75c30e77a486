"""The one place that touches `iroh.iroh_ffi` internals: a trio-native event loop for the bindings.

The generated bindings drive every async call through an asyncio-shaped loop object
(`create_future()` plus `call_soon_threadsafe()` from a Rust thread). We hand them a tiny
loop whose futures park the current trio task and are woken through the trio token, so trio
code awaits iroh calls directly, with no asyncio anywhere (DESIGN.md section 3).

We also replace the byte-by-byte `_UniffiRustBufferBuilder.write` with one `memmove`
(DESIGN.md section 2): that loop caps sends at ~7 MB/s.

Both patches depend on generated code, hence the exact `iroh` version range in pyproject
and the checks in `install()`.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
from collections.abc import Callable, Generator
from typing import Any

import outcome
import trio
from iroh import iroh_ffi

SUPPORTED_IROH = ("1.2.",)

_original_write = iroh_ffi._UniffiRustBufferBuilder.write


class BridgeError(RuntimeError):
    """The installed iroh bindings are not the generated code this bridge was written for."""


class _TrioFuture:
    """One poll of a Rust future: created in the calling task, resolved on the trio thread."""

    __slots__ = ("_token", "_task", "_done", "_cancelled", "_result")

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._task: trio.lowlevel.Task | None = None
        self._done = False
        self._cancelled = False
        self._result: Any = None

    # The generated code calls these two, on the trio thread (via `call_soon_threadsafe`).
    def cancelled(self) -> bool:
        return self._cancelled

    def set_result(self, value: Any) -> None:
        self._done = True
        self._result = value
        if self._task is not None:
            task, self._task = self._task, None
            trio.lowlevel.reschedule(task, outcome.Value(value))

    def _abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        # The awaiting coroutine unwinds into the generated `finally: ffi_free(rust_future)`,
        # which drops the Rust future; a wake-up that still arrives finds us cancelled.
        self._cancelled = True
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def __await__(self) -> Generator[Any, None, Any]:
        if self._done:
            return self._result
        self._task = trio.lowlevel.current_task()
        # Awaited: `yield from` its __await__ is how a future's __await__ awaits (ruff can't tell).
        return (yield from trio.lowlevel.wait_task_rescheduled(self._abort).__await__())  # noqa: ASYNC105


class TrioEventLoop:
    """The loop object the bindings see. Stateless: each future carries its own trio token,
    so it serves every `trio.run` in the process (tests run many)."""

    def create_future(self) -> _TrioFuture:
        return _TrioFuture(trio.lowlevel.current_trio_token())

    def call_soon_threadsafe(
        self, callback: Callable[..., Any], future: _TrioFuture, *args: Any
    ) -> None:
        try:
            future._token.run_sync_soon(callback, future, *args)
        except trio.RunFinishedError:
            pass  # the run that awaited this future is gone; nothing is waiting for it


def _fast_write(self: Any, value: bytes | bytearray | memoryview) -> None:
    """Copy the whole payload into the Rust buffer at once instead of one byte per iteration."""
    data = bytes(value) if not isinstance(value, bytes) else value
    n = len(data)
    with self._reserve(n):
        if n:
            base = ctypes.cast(self.rbuf.data, ctypes.c_void_p).value
            ctypes.memmove(base + self.rbuf.len, data, n)


_installed = False


def _check_bindings() -> None:
    version = importlib.metadata.version("iroh")
    if not version.startswith(SUPPORTED_IROH):
        raise BridgeError(
            f"p2pnode's iroh bridge supports iroh {SUPPORTED_IROH[0]}x, found {version}"
        )
    for name in ("_UniffiRustBufferBuilder", "uniffi_set_event_loop", "_uniffi_rust_call_async"):
        if not hasattr(iroh_ffi, name):
            raise BridgeError(f"iroh {version} bindings lack {name}; the bridge needs updating")


def install() -> None:
    """Make iroh's async calls awaitable from trio and fix the send path. Idempotent."""
    global _installed
    if _installed:
        return
    _check_bindings()
    # Patching the generated code is this module's one job; the loop is duck-typed (the bindings
    # only call create_future and call_soon_threadsafe on it).
    iroh_ffi._UniffiRustBufferBuilder.write = _fast_write  # type: ignore[method-assign]
    iroh_ffi.uniffi_set_event_loop(TrioEventLoop())  # type: ignore[arg-type]
    _installed = True


def uninstall_send_fix() -> None:
    """Restore the generated send path; only the benchmark uses this, to measure the difference."""
    iroh_ffi._UniffiRustBufferBuilder.write = _original_write  # type: ignore[method-assign]


def reinstall_send_fix() -> None:
    iroh_ffi._UniffiRustBufferBuilder.write = _fast_write  # type: ignore[method-assign]
