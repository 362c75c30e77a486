"""members.json is written at once when who the members are changes, and at most once per flush
interval when only last-seen times do (each write is an fsync that blocked the event loop)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

import p2pnode.membership
from p2pnode.membership import MEMBERS_FILE, Membership
from p2pnode.net.addr import PeerAddr

SELF = "aa" * 32
PEER = "bb" * 32


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The member list's writes (real ones), as they happen."""
    done: list[Path] = []
    write = p2pnode.membership.write_atomic

    def counted(path: Path, data: bytes, mode: int = 0o644) -> None:
        write(path, data, mode)
        done.append(path)

    monkeypatch.setattr(p2pnode.membership, "write_atomic", counted)
    return done


def on_disk(data_dir: Path) -> dict[str, dict[str, object]]:
    members: dict[str, dict[str, object]] = json.loads((data_dir / MEMBERS_FILE).read_text())[
        "members"
    ]
    return members


async def test_a_burst_of_greetings_costs_a_few_writes_and_the_file_catches_up(
    tmp_path: Path, writes: list[Path]
) -> None:
    membership = Membership(tmp_path, SELF)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(membership.flush_periodically, 0.05)
        membership.admit(PeerAddr(node_id=PEER, direct_addresses=["127.0.0.1:1"]))
        assert len(writes) == 1 and PEER in on_disk(tmp_path)  # a new member: durable at once
        for _ in range(100):
            membership.seen(PEER)
            membership.admit(PeerAddr(node_id=PEER))  # a known member greeted again
            await trio.lowlevel.checkpoint()
        latest = membership.members[PEER].last_seen
        with trio.fail_after(5):
            while on_disk(tmp_path)[PEER]["last_seen"] != latest:
                await trio.sleep(0.01)
        assert len(writes) <= 4
        nursery.cancel_scope.cancel()


async def test_a_clean_shutdown_writes_what_was_pending(tmp_path: Path, writes: list[Path]) -> None:
    membership = Membership(tmp_path, SELF)
    membership.admit(PeerAddr(node_id=PEER, direct_addresses=["127.0.0.1:1"]))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(membership.flush_periodically, 3600)
        await trio.lowlevel.checkpoint()
        membership.seen(PEER)
        assert len(writes) == 1
        nursery.cancel_scope.cancel()
    assert len(writes) == 2
    assert on_disk(tmp_path)[PEER]["last_seen"] == membership.members[PEER].last_seen
    assert Membership(tmp_path, SELF).members == membership.members
