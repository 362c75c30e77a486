"""Length-prefixed frames of pydantic models over iroh streams.

Every protocol speaks in frames: a 4-byte big-endian length, then that many bytes of JSON.
The length is checked against a per-protocol limit *before* anything is read, so a peer can
never make us buffer more than the limit; the body is then read incrementally, so a frame that
is only half sent costs what was sent, not what was declared; and a frame must arrive whole
within `FRAME_TIMEOUT_S` of its first byte, so a peer cannot park half frames forever.
A frame that stops early, is late or does not parse as the expected model is a `FrameError`,
after which the stream is reset.
"""

from __future__ import annotations

import struct
from contextlib import suppress
from functools import cache
from typing import Any, TypeVar, cast

import iroh
import trio
from pydantic import BaseModel, TypeAdapter, ValidationError

from p2pnode.net.errors import closed_on_purpose, iroh_message

DEFAULT_MAX_FRAME = 1 << 20
FRAME_TIMEOUT_S = 10.0  # from a frame's first byte to its last; generous for the frames we use
_SLOW_LINK_BYTES_PER_S = 1_000_000  # a frame's deadline grows by its length at this rate
_READ_CHUNK = 64 * 1024  # the most one read asks the bindings for (they allocate what is asked)
_HEADER = struct.Struct(">I")

# Application error codes used when resetting streams and closing connections.
ERR_PROTOCOL = 1
ERR_REFUSED = 2
ERR_SHUTDOWN = 3

T = TypeVar("T")


class FrameError(Exception):
    """The peer broke the framing: garbage, an oversized frame, or a stream that ended mid-frame."""


async def read_exact(recv: iroh.RecvStream, n: int) -> bytes:
    """Read exactly `n` bytes in one call, which reserves them: for lengths the reader chose (the
    blocks a fetcher asked for), never for lengths a peer declares. An early end of stream or a
    reset becomes a `FrameError`."""
    if n == 0:
        return b""
    try:
        return await recv.read_exact(n)
    except iroh.IrohError as exc:
        raise FrameError(
            f"stream ended or was reset while {n} bytes were expected ({iroh_message(exc)})"
        ) from None


async def _read_some(recv: iroh.RecvStream, n: int) -> bytes:
    """Up to `n` bytes as they arrive; empty at a clean end (a finished stream, or a connection
    either side closed on purpose)."""
    try:
        return await recv.read(n)
    except iroh.IrohError as exc:
        if closed_on_purpose(exc):
            return b""
        raise FrameError(f"stream was reset ({iroh_message(exc)})") from None


async def _read_incrementally(recv: iroh.RecvStream, n: int) -> bytes:
    """Exactly `n` bytes, asking for at most `_READ_CHUNK` at a time: nothing is reserved up
    front."""
    data = bytearray()
    while len(data) < n:
        chunk = await _read_some(recv, min(n - len(data), _READ_CHUNK))
        if not chunk:
            raise FrameError(f"stream ended {n - len(data)} bytes before the end of a frame")
        data += chunk
    return bytes(data)


async def read_frame(
    recv: iroh.RecvStream, max_size: int = DEFAULT_MAX_FRAME, timeout: float = FRAME_TIMEOUT_S
) -> bytes:
    """The one frame a request or answer consists of: it must start within `timeout`, and then
    arrive whole on the frame's own deadline."""
    head = None
    with trio.move_on_after(timeout):
        head = await _read_some(recv, _HEADER.size)
    if head is None:
        raise FrameError(f"no frame within {timeout:g} s")
    if not head:
        raise FrameError("stream ended before a frame arrived")
    return await _rest_of_frame(recv, head, max_size, timeout)


class FrameReader:
    """The frames of a long-lived stream of many, read in chunks: a burst of small frames costs
    one read from the bindings, not two per frame (each read is a round trip through Rust).

    Waiting for a frame to start has no limit (such streams idle between frames); once its first
    byte is here, the rest must follow on the frame's deadline, as for `read_frame`. A frame's
    length is checked before it is buffered, so at most `max_size` plus one chunk is held.
    """

    def __init__(
        self,
        recv: iroh.RecvStream,
        max_size: int = DEFAULT_MAX_FRAME,
        timeout: float = FRAME_TIMEOUT_S,
    ) -> None:
        self._recv = recv
        self._max_size = max_size
        self._timeout = timeout
        self._buffer = bytearray()

    async def next(self) -> bytes | None:
        """The next frame; None when the peer finished cleanly between frames."""
        if not self._buffer:
            self._buffer += await _read_some(self._recv, _READ_CHUNK)
            if not self._buffer:
                return None
        with trio.move_on_after(self._timeout) as deadline:
            await self._fill(_HEADER.size)
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > self._max_size:
                raise FrameError(f"frame of {length} bytes exceeds the limit of {self._max_size}")
            deadline.deadline += length / _SLOW_LINK_BYTES_PER_S
            end = _HEADER.size + length
            await self._fill(end)
            frame = bytes(self._buffer[_HEADER.size : end])
            del self._buffer[:end]
            return frame
        raise FrameError(f"frame not complete {self._timeout:g} s after it started")

    async def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            chunk = await _read_some(self._recv, _READ_CHUNK)
            if not chunk:
                raise FrameError(
                    f"stream ended {size - len(self._buffer)} bytes before the end of a frame"
                )
            self._buffer += chunk


async def _rest_of_frame(
    recv: iroh.RecvStream, head: bytes, max_size: int, timeout: float
) -> bytes:
    """The frame whose first bytes are `head`, due `timeout` after its start plus its length at a
    slow link's rate: a small frame cannot be dribbled for long, a big one may take its time."""
    with trio.move_on_after(timeout) as deadline:
        head += await _read_incrementally(recv, _HEADER.size - len(head))
        (length,) = _HEADER.unpack(head)
        if length > max_size:
            raise FrameError(f"frame of {length} bytes exceeds the limit of {max_size}")
        deadline.deadline += length / _SLOW_LINK_BYTES_PER_S
        return await _read_incrementally(recv, length)
    raise FrameError(f"frame not complete {timeout:g} s after it started")


async def write_frame(send: iroh.SendStream, payload: bytes) -> None:
    await send.write_all(_HEADER.pack(len(payload)) + payload)


async def write_frames(send: iroh.SendStream, payloads: list[bytes]) -> None:
    """Several frames in one write (one round trip through the bindings)."""
    await send.write_all(b"".join(_HEADER.pack(len(p)) + p for p in payloads))


async def send_model(send: iroh.SendStream, model: BaseModel) -> None:
    await write_frame(send, model.model_dump_json().encode())


async def recv_model(
    recv: iroh.RecvStream,
    schema: type[T] | TypeAdapter[T],
    max_size: int = DEFAULT_MAX_FRAME,
    timeout: float = FRAME_TIMEOUT_S,
) -> T:
    """Read one frame and validate it as `schema` (a model class or a TypeAdapter for unions)."""
    payload = await read_frame(recv, max_size, timeout)
    adapter: TypeAdapter[T] = (
        schema if isinstance(schema, TypeAdapter) else _adapter(cast(Any, schema))
    )
    try:
        return adapter.validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise FrameError(
            f"malformed message: {first['msg']} at "
            f"{'.'.join(map(str, first['loc'])) or 'top level'}"
        ) from None


@cache
def _adapter(schema: Any) -> TypeAdapter[Any]:
    return TypeAdapter(schema)


async def stop_quietly(recv: iroh.RecvStream, code: int = ERR_SHUTDOWN) -> None:
    """Tell the peer we read no more: QUIC drops what it buffered and anything still coming."""
    with suppress(iroh.IrohError):
        await recv.stop(code)


async def reset_quietly(bi: iroh.BiStream, code: int = ERR_PROTOCOL) -> None:
    """Abort both directions of a stream whose peer misbehaved; errors here mean it is gone
    already."""
    for action in (bi.send().reset, bi.recv().stop):
        try:
            await action(code)
        except iroh.IrohError:
            pass
