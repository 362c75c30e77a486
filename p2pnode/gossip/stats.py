"""Gossip counters, as the API reports them (light: no iroh import)."""

from __future__ import annotations

from pydantic import BaseModel


class GossipStats(BaseModel):
    sent: int = 0
    sent_by_type: dict[str, int] = {}  # wire message type -> count: "gossip" eager, "ihave" lazy
    received: int = 0
    delivered: int = 0
    duplicates: int = 0
    dropped: dict[str, int] = {}
    active: list[str] = []  # connected neighbors
    pending: int = 0  # neighbors being dialled
    passive: int = 0
    live: int = 0
