"""The one place that touches `iroh.iroh_ffi` internals: the bindings' async calls, run by trio.

Every async method of the generated bindings ends in `_uniffi_rust_call_async`: poll the Rust
future with a continuation callback, wait for the callback, poll again until it says ready. The
generated version parks on an asyncio-shaped future and hops every callback through the loop's
`call_soon_threadsafe`, even the one Rust makes synchronously, inside the poll, when the result
is already there. We replace that one function with a trio-native one (DESIGN.md section 3):
- a callback made inside the poll, on the trio thread, is just read when the poll returns: most
  calls (writes, finishes, opens, reads of data already here) complete with no wakeup at all;
- a callback from a Rust thread is queued in the run's inbox, and one trio-token call drains all
  that arrived before trio got to it, waking each parked task directly;
- the call is a checkpoint as trio's own socket operations are: it raises `Cancelled` before the
  Rust call starts, and a call that completed without parking (with its result or its error)
  yields once, shielded, so a result that already exists is never dropped by a cancellation.
A cancelled wait frees the Rust future (the `finally` below), which drops it and makes Rust
answer its pending callback, so nothing is left registered.

We also make the byte codecs copy once instead of byte by byte (DESIGN.md section 2: the
generated `_UniffiRustBufferBuilder.write` loop caps sends at ~7 MB/s), from any contiguous
buffer (a reused `bytearray`, a `memoryview` slice), and make the call-status plumbing of every
Rust call leaner. The codecs allocate a payload-sized buffer on each side of every call, which
`_steady_buffers` keeps from being mapped and faulted in afresh each time.

All of it depends on generated code, hence the exact `iroh` version range in pyproject and the
checks in `install()`.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import itertools
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import trio
from iroh import iroh_ffi as _generated_ffi

SUPPORTED_IROH = ("1.2.",)

iroh_ffi: Any = _generated_ffi
"""The generated module, untyped here: we read and replace its internals by name."""

_GENERATED = (
    "_UniffiRustBuffer",
    "_UniffiRustBufferBuilder",
    "_UniffiRustCallStatus",
    "_UniffiFfiConverterBytes",
    "_UNIFFI_RUST_FUTURE_CONTINUATION_CALLBACK",
    "_UNIFFI_RUST_FUTURE_POLL_READY",
    "_uniffi_rust_call_async",
    "_uniffi_rust_call",
    "_uniffi_rust_call_with_error",
    "_uniffi_check_call_status",
    "InternalError",
)
"""What the patches below read or replace in `iroh_ffi`."""


class BridgeError(RuntimeError):
    """The installed iroh bindings are not the generated code this bridge was written for."""


class _Inbox:
    """One trio run's queue of continuations that Rust threads delivered: the first one after a
    drain asks the trio token for the next drain, which wakes everything queued by then."""

    __slots__ = ("_token", "_queue", "_scheduled")

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._queue: deque[tuple[_Poll, int]] = deque()
        self._scheduled = False

    def post(self, poll: _Poll, code: int) -> None:
        """Any thread. The flag is cleared before draining, so an item appended during a drain
        is either drained by it or sees the flag clear and schedules the next one."""
        self._queue.append((poll, code))
        if not self._scheduled:
            self._scheduled = True
            try:
                self._token.run_sync_soon(self._drain)
            except trio.RunFinishedError:
                pass  # the run that waited is gone; nothing is waiting any more

    def _drain(self) -> None:
        self._scheduled = False
        queue = self._queue
        while queue:
            poll, code = queue.popleft()
            poll.wake(code)


_INBOX: trio.lowlevel.RunVar[_Inbox] = trio.lowlevel.RunVar("iroh_bridge_inbox")


def _current_inbox() -> _Inbox:
    try:
        return _INBOX.get()
    except LookupError:
        inbox = _Inbox(trio.lowlevel.current_trio_token())
        _INBOX.set(inbox)
        return inbox


class _Poll:
    """One poll of a Rust future and the continuation Rust answers it with (exactly once: ready,
    wake, or on free)."""

    __slots__ = ("inbox", "thread", "polling", "code", "task")

    def __init__(self, inbox: _Inbox, thread: int) -> None:
        self.inbox = inbox
        self.thread = thread
        self.polling = True
        self.code: int | None = None
        self.task: trio.lowlevel.Task | None = None

    def wake(self, code: int) -> None:
        """On the trio thread: record the answer and resume the parked task, if still parked."""
        self.code = code
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self.task = None  # the answer still comes (when the future is freed); nobody waits for it
        return trio.lowlevel.Abort.SUCCEEDED


_polls: dict[int, _Poll] = {}
"""Polls awaiting their continuation, by the handle Rust passes back. Dict operations are atomic
under the GIL, which every callback holds."""
_handles = itertools.count(1)


def _continuation(handle: int, code: int) -> None:
    """The continuation callback, on whatever thread Rust calls it from. It must never raise."""
    poll = _polls.pop(handle, None)
    if poll is None:
        return
    if poll.polling and threading.get_ident() == poll.thread:
        poll.code = code  # called inside ffi_poll: the poller reads it when the poll returns
    else:
        poll.inbox.post(poll, code)


_continuation_callback: Any = None
"""`_continuation` as a C function pointer; built by `install()`, kept alive here."""


async def _rust_call_async(
    rust_future: int,
    ffi_poll: Callable[..., None],
    ffi_complete: Callable[..., Any],
    ffi_free: Callable[[int], None],
    lift_func: Callable[[Any], Any],
    error_ffi_converter: Any,
) -> Any:
    """Drop-in for the generated `_uniffi_rust_call_async` (same arguments, same result)."""
    parked = False
    try:
        await trio.lowlevel.checkpoint_if_cancelled()
        inbox = _current_inbox()
        thread = threading.get_ident()
        while True:
            poll = _Poll(inbox, thread)
            handle = next(_handles)
            _polls[handle] = poll
            ffi_poll(rust_future, _continuation_callback, handle)
            poll.polling = False
            if poll.code is None:
                poll.task = trio.lowlevel.current_task()
                parked = True
                await trio.lowlevel.wait_task_rescheduled(poll.abort)
            if poll.code == iroh_ffi._UNIFFI_RUST_FUTURE_POLL_READY:
                break
        return lift_func(_rust_call_with_error(error_ffi_converter, ffi_complete, rust_future))
    finally:
        ffi_free(rust_future)
        if not parked:  # its result, or its error, came without a yield: yield once now
            await trio.lowlevel.cancel_shielded_checkpoint()


def _rust_call_with_error(error_ffi_converter: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """Drop-in for the generated one: a zeroed status passed as is (ctypes takes a structure
    where its pointer is expected), checked only when Rust set it."""
    status = iroh_ffi._UniffiRustCallStatus()
    result = fn(*args, status)
    if status.code:
        iroh_ffi._uniffi_check_call_status(error_ffi_converter, status)
    return result


_rust_call = functools.partial(_rust_call_with_error, None)
"""Drop-in for the generated `_uniffi_rust_call` (handle clones, buffer alloc and free: several
per async call) without its extra Python frame."""


def _buffer_address(rbuf: Any) -> int:
    address: int = ctypes.cast(rbuf.data, ctypes.c_void_p).value or 0
    return address


Payload = bytes | bytearray | memoryview


def _payload(value: Payload) -> tuple[Payload, int]:
    """A byte string argument and its length in bytes, ready for `_copy_to`: any contiguous
    buffer as it is (no intermediate `bytes`); only a non-contiguous view is gathered first."""
    if isinstance(value, bytes):
        return value, len(value)
    view = memoryview(value)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view, view.nbytes


def _copy_to(address: int, data: Payload, n: int) -> None:
    """One memcpy of `data`'s `n` bytes to `address`: a `c_char` array's `raw` setter takes any
    contiguous buffer, read-only ones included (which `ctypes.memmove` would not); typeshed
    declares it `bytes` only."""
    if n:
        (ctypes.c_char * n).from_address(address).raw = cast(bytes, data)


def buffer_argument(data: Payload) -> bytes:
    """``data`` for a byte string parameter of the bindings, which their signatures type
    ``bytes``: once installed, the codecs take any buffer (a view of a reused one: no copy of
    its own), copying it into Rust when the call is made, so it may be refilled as soon as the
    call returns."""
    return cast(bytes, data)


def _fast_write(self: Any, value: Payload) -> None:
    """Copy the whole payload into the Rust buffer at once instead of one byte per iteration."""
    data, n = _payload(value)
    with self._reserve(n):
        _copy_to(_buffer_address(self.rbuf) + self.rbuf.len, data, n)


def _lower_bytes(value: Payload) -> Any:
    """Byte string argument -> RustBuffer (i32 length, then the bytes): one Rust call that
    reserves exactly that (no zero fill) and one copy of the payload, instead of a builder that
    allocates, grows and packs the length one byte at a time."""
    data, n = _payload(value)
    rbuf = iroh_ffi._UniffiRustBuffer.reserve(iroh_ffi._UniffiRustBuffer(), n + 4)
    base = _buffer_address(rbuf)
    _copy_to(base, n.to_bytes(4, "big", signed=True), 4)
    _copy_to(base + 4, data, n)
    rbuf.len = n + 4
    return rbuf


def _lift_bytes(rbuf: Any) -> bytes:
    """RustBuffer -> `bytes` with one slice of the Rust memory (a single copy), then free it."""
    try:
        n = rbuf.len
        size = int.from_bytes(rbuf.data[:4], "big", signed=True) if n >= 4 else -1
        if size != n - 4:
            raise iroh_ffi.InternalError(f"byte string of {size} bytes in a {n}-byte buffer")
        data: bytes = rbuf.data[4:n]
        return data
    finally:
        rbuf.free()


_generated_write = iroh_ffi._UniffiRustBufferBuilder.write
_generated_lower = iroh_ffi._UniffiFfiConverterBytes.lower


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
MMAP_THRESHOLD = 16 << 20
TRIM_THRESHOLD = 32 << 20


def _steady_buffers() -> None:
    """Let glibc reuse the payload-sized buffers the codecs allocate and free on every call
    instead of mapping (and faulting in) fresh memory for each one.

    Each 1 MiB write or read allocates the RustBuffer, the `Vec` Rust lifts it into (or lowers a
    read from) and, for a read, the `bytes` lifted from it. glibc's default mmap threshold
    adapts to what the process freed before, and its trim threshold follows, so whether these
    come from reused heap or from fresh, zero-filled pages depends on the process's history:
    measured 1-8 page faults per MiB moved in some processes and 380 (sender) to 740 (receiver)
    in others, ~0.1-0.25 s more CPU per 256 MiB on each side. Fixed thresholds make the cheap
    case the only case: buffers below `MMAP_THRESHOLD` (the store's 8 MiB read chunks too, where
    glibc's own adaptation tops out at 32 MiB) come from the heap, and an arena gives memory
    back once `TRIM_THRESHOLD` of it is free. Elsewhere than glibc: nothing."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def _check_bindings() -> None:
    version = importlib.metadata.version("iroh")
    if not version.startswith(SUPPORTED_IROH):
        raise BridgeError(
            f"p2pnode's iroh bridge supports iroh {SUPPORTED_IROH[0]}x, found {version}"
        )
    for name in _GENERATED:
        if not hasattr(iroh_ffi, name):
            raise BridgeError(f"iroh {version} bindings lack {name}; the bridge needs updating")


def install() -> None:
    """Make iroh's async calls awaitable from trio and fix the byte codecs. Idempotent."""
    global _continuation_callback
    if _continuation_callback is not None:
        return
    _check_bindings()
    # Patching the generated code is this module's one job: the generated methods look these
    # names up at call time, so replacing them changes every call and nothing else.
    _continuation_callback = iroh_ffi._UNIFFI_RUST_FUTURE_CONTINUATION_CALLBACK(_continuation)
    iroh_ffi._uniffi_rust_call = _rust_call
    iroh_ffi._uniffi_rust_call_with_error = _rust_call_with_error
    iroh_ffi._uniffi_rust_call_async = _rust_call_async
    iroh_ffi._UniffiFfiConverterBytes.lift = staticmethod(_lift_bytes)
    reinstall_send_fix()
    _steady_buffers()


def uninstall_send_fix() -> None:
    """Restore the generated send path; only the benchmark uses this, to measure the difference."""
    iroh_ffi._UniffiRustBufferBuilder.write = _generated_write
    iroh_ffi._UniffiFfiConverterBytes.lower = _generated_lower


def reinstall_send_fix() -> None:
    iroh_ffi._UniffiRustBufferBuilder.write = _fast_write
    iroh_ffi._UniffiFfiConverterBytes.lower = staticmethod(_lower_bytes)
