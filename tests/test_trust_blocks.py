"""Block lists are what a fetcher trusts once their root matches: they must not change
afterwards."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from p2pnode.blobs.blocks import BlockList


def test_block_list_is_frozen_so_its_cached_root_cannot_go_stale() -> None:
    block_list = BlockList(size=5, hashes=(b"\x01" * 32,))
    root = block_list.root
    with pytest.raises(ValidationError):
        block_list.hashes = (b"\x02" * 32,)  # type: ignore[misc]
    assert block_list.root == root


def test_size_must_fit_the_u64_wire_form() -> None:
    with pytest.raises(ValidationError) as refused:
        BlockList(size=1 << 64, hashes=())
    assert refused.value.errors()[0]["loc"] == ("size",)
    with pytest.raises(
        ValidationError
    ) as shape:  # the largest size passes the field check, then the shape check
        BlockList(size=(1 << 64) - 1, hashes=())
    assert shape.value.errors()[0]["loc"] == ()
