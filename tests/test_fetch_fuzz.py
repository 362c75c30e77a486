"""Everything a provider, a ticket or a guest can put in front of the fetcher and the runner,
fuzzed: each parser answers with a value or its one documented error, whatever the input.
No deadlines: the machine is shared, and slowness is not what these tests look for."""

from __future__ import annotations

import blake3
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from p2pnode.blobs.blocks import BLOCK_SIZE, BlockList
from p2pnode.blobs.fetch import block_ranges
from p2pnode.blobs.protocol import BlobHeader, BlobReply, BlobRequest, parse_header, requested_spans
from p2pnode.executors.base import MAX_OUTPUT_NAME, OutputName

SMALL = BlockList(
    size=3 * BLOCK_SIZE + 5, hashes=tuple(blake3.blake3(bytes([i])).digest() for i in range(4))
)
EMPTY = BlockList(size=0, hashes=())
any_int = st.integers(min_value=-(1 << 70), max_value=1 << 70)
hex_text = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(bytes.hex),
    st.sampled_from([SMALL.to_bytes().hex(), EMPTY.to_bytes().hex()]),
)
sizes = st.one_of(any_int, st.sampled_from([SMALL.size, 0]))
roots = st.one_of(
    st.none(), st.sampled_from([SMALL.root_hex, EMPTY.root_hex, "00" * 32, "not hex"])
)


@settings(max_examples=500, deadline=None)
@given(sizes, hex_text, roots, st.one_of(st.none(), sizes))
def test_parse_header_survives_any_header(
    size: int, block_list: str, root: str | None, expected: int | None
) -> None:
    header = BlobHeader(size=size, block_list=block_list)
    try:
        parsed = parse_header(header, "ab" * 32, root, expected)
    except ValueError:
        return
    assert parsed.size == size and len(parsed) == -(-size // BLOCK_SIZE)
    assert root is None or parsed.root_hex == root
    assert expected is None or parsed.size == expected


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_reply_frames_parse_or_fail_cleanly(raw: bytes) -> None:
    try:
        BlobReply.validate_json(raw)
    except ValidationError:
        pass


@settings(deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_block_list_bytes_parse_or_fail_cleanly(raw: bytes, size: int) -> None:
    for data in (raw, size.to_bytes(8, "big") + raw):
        try:
            parsed = BlockList.from_bytes(data)
        except ValueError:
            continue
        assert parsed.to_bytes() == data


@settings(max_examples=300, deadline=None)
@given(any_int, st.binary(max_size=BLOCK_SIZE + 10))
def test_block_checks_survive_any_index_and_data(index: int, data: bytes) -> None:
    assert SMALL.verify_block(index, data) is False  # no block hashes to these tiny digests
    try:
        offset, length = SMALL.block_range(index)
    except IndexError:
        assert not 0 <= index < len(SMALL)
        return
    assert 0 <= offset and offset + length <= SMALL.size and 0 < length <= BLOCK_SIZE


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.lists(st.tuples(any_int, any_int), max_size=50)))
def test_requested_spans_stay_inside_the_blob(ranges: list[tuple[int, int]] | None) -> None:
    try:
        request = BlobRequest(hash="ab" * 32, blocks=ranges)
    except ValidationError:
        return  # refused at parse time: empty, overlapping, unordered or too many ranges
    for block_list in (SMALL, EMPTY):
        for offset, length in requested_spans(request, block_list):
            assert 0 <= offset and 0 < length and offset + length <= block_list.size


@settings(deadline=None)
@given(st.sets(st.integers(min_value=0, max_value=10_000), max_size=200))
def test_block_ranges_cover_exactly_the_indices(indices: set[int]) -> None:
    ranges = block_ranges(sorted(indices))
    assert [i for start, end in ranges for i in range(start, end)] == sorted(indices)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=MAX_OUTPUT_NAME + 10))
def test_output_names_validate_or_fail_cleanly(name: str) -> None:
    try:
        valid = TypeAdapter(OutputName).validate_python(name)
    except ValidationError:
        return
    assert len(valid.encode()) <= MAX_OUTPUT_NAME
    assert all(part not in ("", ".", "..") for part in valid.split("/"))
    assert all(ord(char) >= 32 and not 127 <= ord(char) < 160 for char in valid)
