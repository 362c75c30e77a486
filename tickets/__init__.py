"""Copy-paste tickets ("p2pjoin…", "p2pblob…"): a pure codec.

Deliberately free of iroh and trio so CLIs, web handlers and tests can read and
write tickets without starting a node.
"""

from __future__ import annotations

from tickets.codec import VERSION, TicketError
from tickets.kinds import (
    BlobTicket,
    JoinTicket,
    NodeAddr,
    Ticket,
    encode,
    parse,
    parse_blob,
    parse_join,
)

__all__ = [
    "VERSION",
    "BlobTicket",
    "JoinTicket",
    "NodeAddr",
    "Ticket",
    "TicketError",
    "encode",
    "parse",
    "parse_blob",
    "parse_join",
]
