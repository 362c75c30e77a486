"""The blob protocol: ask a provider for a blob by hash, get its block list, then raw blocks.

One bi stream per request. The fetcher sends a `BlobRequest` frame; the provider answers with a
`BlobHeader` frame (size and the block-hash list) or a `BlobRefused` frame, then writes the
requested blocks back to back as raw bytes. Block lengths follow from the size, so the data
needs no framing, and the fetcher verifies each block against the list, and the list against
the root it already trusts, before anything touches its disk.

Who may fetch: cluster members, and anyone holding a blob ticket's capability, an HMAC of the
hash under a key derived from the provider's node key: stateless, unforgeable, per blob.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Annotated, Literal

import iroh
from pydantic import AfterValidator, BaseModel, Field, TypeAdapter

from p2pnode.blobs.blocks import HASH_LEN, BlockList, block_count
from p2pnode.blobs.store import BlobNotFound, BlobStore, StoreError
from p2pnode.ids import BlobHash, BlobHashField, NodeId
from p2pnode.net.addr import remote_node_id
from p2pnode.net.bridge import buffer_argument
from p2pnode.net.framing import recv_model, reset_quietly, send_model, stop_quietly
from p2pnode.net.peerlog import PeerLog

log = logging.getLogger(__name__)

BLOBS_ALPN = b"p2pnode/blobs/1"
MAX_RANGES = 512  # a resumed fetch asks for its missing blocks, which are few runs in practice
MAX_REQUEST_FRAME = 16 * 1024  # hash, capability and MAX_RANGES ranges; anyone may send one
MAX_HEADER_FRAME = 16 << 20  # block list of a 256 GiB blob, hex-encoded
_REPLY_SLACK = 4096  # JSON around the block list, or a refusal's reason


def _ascending_disjoint(ranges: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
    """Ranges must be non-empty, in order and disjoint: no request makes us send a block twice."""
    end = 0
    for start, stop in ranges or []:
        if not end <= start < stop:
            raise ValueError("block ranges must be non-empty, ascending and must not overlap")
        end = stop
    return ranges


BlockRanges = Annotated[
    list[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]] | None,
    Field(max_length=MAX_RANGES),
    AfterValidator(_ascending_disjoint),
]


class BlobRequest(BaseModel):
    hash: BlobHashField
    capability: Annotated[str, Field(max_length=512)] = ""
    blocks: BlockRanges = None  # half-open block-index ranges; None = the whole blob


class BlobHeader(BaseModel):
    type: Literal["header"] = "header"
    size: int
    block_list: str  # hex of BlockList.to_bytes()


class BlobRefused(BaseModel):
    type: Literal["refused"] = "refused"
    reason: str


BlobReply = TypeAdapter(Annotated[BlobHeader | BlobRefused, Field(discriminator="type")])


class Capabilities:
    """Issues and checks blob-ticket capabilities with a key only this node knows."""

    def __init__(self, secret_key: iroh.SecretKey) -> None:
        self._key = hashlib.blake2b(secret_key.to_bytes(), person=b"p2pnode-blobcap").digest()

    def issue(self, blob_hash: BlobHash) -> bytes:
        return hmac.new(self._key, bytes.fromhex(blob_hash), hashlib.sha256).digest()

    def check(self, blob_hash: BlobHash, capability_hex: str) -> bool:
        with contextlib.suppress(ValueError):
            return hmac.compare_digest(self.issue(blob_hash), bytes.fromhex(capability_hex))
        return False


def requested_spans(request: BlobRequest, block_list: BlockList) -> list[tuple[int, int]]:
    """(offset, length) byte spans of the blocks a request names, clipped to the blob, in its
    order."""
    count = len(block_list)
    spans = []
    for start, end in request.blocks if request.blocks is not None else [(0, count)]:
        end = min(end, count)
        if start < end:
            offset = block_list.block_range(start)[0]
            last_offset, last_length = block_list.block_range(end - 1)
            spans.append((offset, last_offset + last_length - offset))
    return spans


class BlobProvider:
    """Serves blobs from the store to members and capability holders."""

    def __init__(
        self, store: BlobStore, capabilities: Capabilities, is_member: Callable[[NodeId], bool]
    ) -> None:
        self._store = store
        self._capabilities = capabilities
        self._is_member = is_member
        self.served_bytes = 0
        self.refused = 0
        self._peer_log = PeerLog(log)

    async def handle_stream(self, connection: iroh.Connection, bi: iroh.BiStream) -> None:
        send, recv = bi.send(), bi.recv()
        request = await recv_model(recv, BlobRequest, MAX_REQUEST_FRAME)
        await stop_quietly(
            recv
        )  # the request is all a fetcher sends; nothing else may pile up while we serve
        peer = remote_node_id(connection)
        if not (
            self._is_member(peer) or self._capabilities.check(request.hash, request.capability)
        ):
            self.refused += 1
            self._peer_log.event(
                "blob requests refused",
                peer,
                "refused blob %s to %s: neither a member nor a valid ticket",
                request.hash[:12],
                peer[:10],
            )
            await self._refuse(
                send, "not authorised: join the cluster or use a blob ticket from this node"
            )
            return
        with self._store.in_use(request.hash):
            try:
                block_list = await self._store.block_list(request.hash)
            except BlobNotFound:
                await self._refuse(send, f"this node does not have blob {request.hash}")
                return
            await send_model(
                send, BlobHeader(size=block_list.size, block_list=block_list.to_bytes().hex())
            )
            try:
                await self._send_spans(send, request, block_list)
            except StoreError as exc:  # a file added in place changed: send nothing wrong
                log.warning("stopped serving blob %s to %s: %s", request.hash[:12], peer[:10], exc)
                await reset_quietly(bi)
                return
        await send.finish()

    async def _send_spans(
        self, send: iroh.SendStream, request: BlobRequest, block_list: BlockList
    ) -> None:
        for offset, length in requested_spans(request, block_list):
            async with contextlib.aclosing(
                self._store.serve_blocks(request.hash, offset, length)
            ) as blocks:
                async for block in blocks:
                    await send.write_all(buffer_argument(block))
                    self.served_bytes += block.nbytes

    @staticmethod
    async def _refuse(send: iroh.SendStream, reason: str) -> None:
        await send_model(send, BlobRefused(reason=reason))
        await send.finish()


def reply_limit(size: int | None) -> int:
    """Largest reply frame to read when the blob's size is known: its hex block list and some JSON,
    so a provider can't make a fetcher of a small blob buffer a 16 MiB header."""
    if size is None:
        return MAX_HEADER_FRAME
    return min(MAX_HEADER_FRAME, _REPLY_SLACK + 2 * (8 + HASH_LEN * block_count(size)))


def parse_header(
    header: BlobHeader, blob_hash: BlobHash, root: BlobHash | None, size: int | None = None
) -> BlockList:
    """Trust the provider's block list only if it matches the root and the size we were given
    (when we have them); raises ValueError, whatever the header holds."""
    block_list = BlockList.from_bytes(bytes.fromhex(header.block_list))
    if block_list.size != header.size:
        raise ValueError("block list does not match the announced size")
    if root is not None and block_list.root_hex != root:
        raise ValueError(
            f"block list does not match the verification root of blob {blob_hash[:12]}"
        )
    if size is not None and block_list.size != size:
        raise ValueError(
            f"blob {blob_hash[:12]} should be {size} bytes but its block list commits to "
            f"{block_list.size}"
        )
    return block_list
