"""The block verification scheme: block hashes, the root that binds them, and their encoding."""

from __future__ import annotations

import os
import struct

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from p2pnode.blobs.blocks import BLOCK_SIZE, BlobHasher, BlockList, block_count, hash_file

SIZES = [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 12345]


def expected_hashes(data: bytes) -> list[bytes]:
    return [
        blake3.blake3(data[i : i + BLOCK_SIZE]).digest() for i in range(0, len(data), BLOCK_SIZE)
    ]


def block_list_of(data: bytes) -> BlockList:
    hasher = BlobHasher()
    hasher.update(data)
    return hasher.finish()[1]


@pytest.mark.parametrize("size", SIZES)
def test_hasher_matches_independent_computation(size: int, tmp_path) -> None:
    data = os.urandom(size)
    hasher = BlobHasher()
    hasher.update(data)
    digest, bl = hasher.finish()
    assert digest == blake3.blake3(data).digest()
    assert bl.size == size
    assert list(bl.hashes) == expected_hashes(data)
    assert len(bl) == block_count(size) == -(-size // BLOCK_SIZE)
    root = blake3.blake3(
        b"p2pnode-blocks-v1" + struct.pack(">Q", size) + b"".join(expected_hashes(data))
    ).digest()
    assert bl.root == root and bl.root_hex == root.hex()
    path = tmp_path / "f"
    path.write_bytes(data)
    assert hash_file(path) == (digest, bl)
    assert BlockList.from_file(path) == bl


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2 * BLOCK_SIZE + 7), max_size=6))
def test_chunking_does_not_change_the_result(cuts: list[int]) -> None:
    data = os.urandom(2 * BLOCK_SIZE + 7)
    hasher = BlobHasher()
    prev = 0
    for cut in sorted(cuts) + [len(data)]:
        hasher.update(data[prev:cut])
        prev = cut
    assert hasher.finish() == (blake3.blake3(data).digest(), block_list_of(data))


def test_empty_blob_has_no_blocks() -> None:
    bl = block_list_of(b"")
    assert bl.hashes == () and bl.size == 0
    with pytest.raises(IndexError):
        bl.block_range(0)
    assert not bl.verify_block(0, b"")


def test_block_range_covers_blob_exactly() -> None:
    bl = block_list_of(os.urandom(2 * BLOCK_SIZE + 5))
    assert [bl.block_range(i) for i in range(len(bl))] == [
        (0, BLOCK_SIZE),
        (BLOCK_SIZE, BLOCK_SIZE),
        (2 * BLOCK_SIZE, 5),
    ]
    with pytest.raises(IndexError):
        bl.block_range(3)
    with pytest.raises(IndexError):
        bl.block_range(-1)


def test_flipped_byte_in_any_block_fails_verification() -> None:
    data = bytearray(os.urandom(3 * BLOCK_SIZE + 100))
    bl = block_list_of(bytes(data))
    for i in range(len(bl)):
        offset, length = bl.block_range(i)
        block = bytearray(data[offset : offset + length])
        assert bl.verify_block(i, block)
        for pos in (0, length // 2, length - 1):
            block[pos] ^= 0x01
            assert not bl.verify_block(i, block), (i, pos)
            block[pos] ^= 0x01
        other = (i + 1) % len(bl)
        assert not bl.verify_block(other, block)


def test_wrong_length_and_index_fail_verification() -> None:
    data = os.urandom(BLOCK_SIZE + 10)
    bl = block_list_of(data)
    assert bl.verify_block(1, data[BLOCK_SIZE:])
    assert not bl.verify_block(1, data[BLOCK_SIZE:] + b"\0")
    assert not bl.verify_block(1, data[BLOCK_SIZE:-1])
    assert not bl.verify_block(0, data[: BLOCK_SIZE - 1])
    assert not bl.verify_block(2, b"")
    assert not bl.verify_block(-1, data[BLOCK_SIZE:])
    # The length is checked on its own: a block list whose last hash covers too many bytes
    # (so the hash alone would match) still rejects the overlong block.
    overlong = data[BLOCK_SIZE:] + b"!"
    lying = BlockList(size=bl.size, hashes=(bl.hashes[0], blake3.blake3(overlong).digest()))
    assert not lying.verify_block(1, overlong)


@pytest.mark.parametrize("size", SIZES)
def test_bytes_round_trip(size: int) -> None:
    bl = block_list_of(os.urandom(size))
    raw = bl.to_bytes()
    assert len(raw) == 8 + 32 * len(bl)
    again = BlockList.from_bytes(raw)
    assert again == bl and again.root == bl.root
    assert BlockList.model_validate_json(bl.model_dump_json()) == bl


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=40 * BLOCK_SIZE), st.randoms(use_true_random=False))
def test_bytes_round_trip_any_size(size: int, rnd) -> None:
    hashes = tuple(rnd.randbytes(32) for _ in range(block_count(size)))
    bl = BlockList(size=size, hashes=hashes)
    assert BlockList.from_bytes(bl.to_bytes()) == bl


def test_malformed_bytes_rejected() -> None:
    raw = block_list_of(os.urandom(BLOCK_SIZE + 1)).to_bytes()
    for bad in (b"", raw[:7], raw[:-1], raw + b"\0", struct.pack(">Q", 1 << 40) + raw[8:]):
        with pytest.raises(ValueError):
            BlockList.from_bytes(bad)


def test_inconsistent_block_list_rejected() -> None:
    with pytest.raises(ValidationError):
        BlockList(size=BLOCK_SIZE + 1, hashes=(b"\0" * 32,))
    with pytest.raises(ValidationError):
        BlockList(size=1, hashes=(b"\0" * 31,))
    with pytest.raises(ValidationError):
        BlockList(size=-1, hashes=())


def test_root_detects_any_change() -> None:
    """A provider's BlockList is accepted only if its root is the trusted one."""
    data = os.urandom(2 * BLOCK_SIZE + 2)
    good = block_list_of(data)
    tampered_hash = BlockList(
        size=good.size, hashes=(good.hashes[0], blake3.blake3(b"x").digest(), good.hashes[2])
    )
    swapped = BlockList(size=good.size, hashes=(good.hashes[1], good.hashes[0], good.hashes[2]))
    resized = BlockList(size=good.size - 1, hashes=good.hashes)
    roots = {good.root, tampered_hash.root, swapped.root, resized.root}
    assert len(roots) == 4
    # The root is not the content hash: they are different commitments.
    assert good.root != blake3.blake3(data).digest()
