"""Length-prefixed frames of pydantic models over iroh streams.

Every protocol speaks in frames: a 4-byte big-endian length, then that many bytes of JSON.
The length is checked against a per-protocol limit *before* anything is read, so a peer can
never make us buffer more than the limit; a frame that stops early or does not parse as the
expected model is a `FrameError`, after which the stream is reset.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any, TypeVar

import iroh
from pydantic import BaseModel, TypeAdapter, ValidationError

from p2pnode.net.errors import closed_on_purpose, iroh_message

DEFAULT_MAX_FRAME = 1 << 20
_HEADER = struct.Struct(">I")

# Application error codes used when resetting streams and closing connections.
ERR_PROTOCOL = 1
ERR_REFUSED = 2
ERR_SHUTDOWN = 3

T = TypeVar("T")


class FrameError(Exception):
    """The peer broke the framing: garbage, an oversized frame, or a stream that ended mid-frame."""


async def read_exact(recv: iroh.RecvStream, n: int) -> bytes:
    """Read exactly `n` bytes; an early end of stream or a reset becomes a `FrameError`."""
    if n == 0:
        return b""
    try:
        return await recv.read_exact(n)
    except iroh.IrohError as exc:
        raise FrameError(f"stream ended or was reset while {n} bytes were expected ({iroh_message(exc)})") from None


async def read_frame(recv: iroh.RecvStream, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    frame = await read_frame_or_end(recv, max_size)
    if frame is None:
        raise FrameError("stream ended before a frame arrived")
    return frame


async def read_frame_or_end(recv: iroh.RecvStream, max_size: int = DEFAULT_MAX_FRAME) -> bytes | None:
    """One frame of a stream of many: None when the peer finished cleanly between frames
    (finished the stream), or either side closed the connection on purpose."""
    try:
        head = await recv.read(_HEADER.size)
    except iroh.IrohError as exc:
        if closed_on_purpose(exc):
            return None
        raise FrameError(f"stream was reset ({iroh_message(exc)})") from None
    if not head:
        return None
    head += await read_exact(recv, _HEADER.size - len(head))
    (length,) = _HEADER.unpack(head)
    if length > max_size:
        raise FrameError(f"frame of {length} bytes exceeds the limit of {max_size}")
    return await read_exact(recv, length)


async def write_frame(send: iroh.SendStream, payload: bytes) -> None:
    await send.write_all(_HEADER.pack(len(payload)) + payload)


async def send_model(send: iroh.SendStream, model: BaseModel) -> None:
    await write_frame(send, model.model_dump_json().encode())


async def recv_model(recv: iroh.RecvStream, schema: type[T] | TypeAdapter[T], max_size: int = DEFAULT_MAX_FRAME) -> T:
    """Read one frame and validate it as `schema` (a model class or a TypeAdapter for unions)."""
    payload = await read_frame(recv, max_size)
    adapter = schema if isinstance(schema, TypeAdapter) else _adapter(schema)
    try:
        return adapter.validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise FrameError(f"malformed message: {first['msg']} at {'.'.join(map(str, first['loc'])) or 'top level'}") from None


@lru_cache(maxsize=None)
def _adapter(schema: type[Any]) -> TypeAdapter[Any]:
    return TypeAdapter(schema)


async def reset_quietly(bi: iroh.BiStream, code: int = ERR_PROTOCOL) -> None:
    """Abort both directions of a stream whose peer misbehaved; errors here mean it is gone already."""
    for action in (bi.send().reset, bi.recv().stop):
        try:
            await action(code)
        except iroh.IrohError:
            pass
