"""Who owns the socket the CLI just connected to, before the API token goes out.

On a shared machine any account may bind a loopback port while no node does; the CLI must not hand
that account its bearer token (which lets it write files as this user, run jobs, read the join
ticket). Linux shows every socket of the network namespace with its owner's uid in `/proc/net/tcp`
and `/proc/net/tcp6`, so the check costs a file read and no round trip, and needs nothing from the
node (a mutual proof would need a new handshake and a node that speaks it).

What holds where the check cannot be made: without `/proc/net` (macOS, BSD) the token goes to
whatever listens, as before; for an --api that is not a loopback address the user chose the host
and the network, and the token goes to it (use https across machines).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Final

PROC_NET: Final = Path("/proc/net")
LISTEN: Final = "0A"
"""TCP_LISTEN in the `st` column of /proc/net/tcp."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForeignListener(Exception):
    """The loopback listener belongs to another account; the message is for a person."""


def check_listener(peer: tuple[str, int], proc_net: Path = PROC_NET) -> None:
    """Raise ForeignListener unless the loopback listener at `peer` (as `getpeername` gives it)
    belongs to this user or to root (who can read the token file anyway). Does nothing for a peer
    off loopback or where `/proc/net` does not exist (see the module docstring)."""
    address = _unmapped(ipaddress.ip_address(peer[0].partition("%")[0]))
    if not address.is_loopback:
        return
    tables = [proc_net / "tcp", proc_net / "tcp6"]
    if not any(table.exists() for table in tables):
        return
    owners = {uid for table in tables for uid in _listener_uids(table, address, peer[1])}
    mine = {os.getuid(), 0}
    if not owners:
        raise ForeignListener(
            f"nothing in {proc_net}/tcp listens on port {peer[1]}, yet something answered; "
            "not sending it the API token"
        )
    if not owners <= mine:
        strangers = ", ".join(str(uid) for uid in sorted(owners - mine))
        raise ForeignListener(
            f"port {peer[1]} is held by uid {strangers}, not by you (uid {os.getuid()}); "
            "not sending it the API token (is the node running?)"
        )


def _listener_uids(table: Path, address: IPAddress, port: int) -> list[int]:
    """The uids of the listening sockets in one table that accept connections to address:port."""
    try:
        lines = table.read_text().splitlines()[1:]
    except FileNotFoundError:
        return []
    uids = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[3] != LISTEN:
            continue
        local_hex, _, port_hex = fields[1].partition(":")
        local = _unmapped(_decode(local_hex))
        if int(port_hex, 16) == port and (local == address or local.is_unspecified):
            uids.append(int(fields[7]))
    return uids


def _decode(hex_address: str) -> IPAddress:
    """The kernel prints an address as 32-bit words in host byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def _unmapped(address: IPAddress) -> IPAddress:
    """`::ffff:127.0.0.1` is 127.0.0.1: a dual-stack listener shows it that way."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
