"""Who owns the socket the CLI just connected to, before the API token goes out.

On a shared machine any account may bind a loopback port while no node does; the CLI must not hand
that account its bearer token (which lets it write files as this user, run jobs, read the join
ticket). Linux tells every socket's owner uid, so the check costs no round trip and needs nothing
from the node (a mutual proof would need a new handshake and a node that speaks it). It asks
sock_diag netlink for the listening TCP sockets (about 0.06 ms of CPU); reading /proc/net/tcp and
tcp6 instead walks every socket of the namespace in the kernel (about 8 ms here), so those are only
the fallback where netlink is refused (some sandboxes).

What holds where the check cannot be made: without either (macOS, BSD) the token goes to whatever
listens, as before; for an --api that is not a loopback address the user chose the host and the
network, and the token goes to it (use https across machines).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Final

PROC_NET: Final = Path("/proc/net")
TCP_LISTEN: Final = 10
"""The kernel's TCP_LISTEN state: `0A` in the `st` column of /proc/net/tcp."""
NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20
NLM_F_REQUEST_DUMP: Final = 0x1 | 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSG_HEADER: Final = struct.Struct("=IHHII")
DIAG_REQUEST: Final = struct.Struct("=BBBBI48x")
"""inet_diag_req_v2: family, protocol, ext, pad, states, then a socket id a dump ignores."""
DIAG_ANSWER: Final = struct.Struct(">BBBBHH16s16s")
"""inet_diag_msg up to its socket id's addresses: family, state, timer, retrans, then the ports
(network order, as the addresses), src, dst; the uid (host order) follows at `DIAG_UID_AT`."""
DIAG_UID_AT: Final = 4 + 48 + 12

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Listener = tuple[IPAddress, int]
"""A listening socket's local address and its owner's uid."""


class ForeignListener(Exception):
    """The loopback listener belongs to another account; the message is for a person."""


def check_listener(peer: tuple[str, int], proc_net: Path = PROC_NET) -> None:
    """Raise ForeignListener unless the loopback listener at `peer` (as `getpeername` gives it)
    belongs to this user or to root (who can read the token file anyway). Does nothing for a peer
    off loopback or where no source tells (see the module docstring)."""
    address = _unmapped(ipaddress.ip_address(peer[0].partition("%")[0]))
    if not address.is_loopback:
        return
    listeners = _listeners(peer[1], proc_net)
    if listeners is None:
        return
    owners = {uid for local, uid in listeners if local == address or local.is_unspecified}
    mine = {os.getuid(), 0}
    if not owners:
        raise ForeignListener(
            f"no listening socket on port {peer[1]} is known, yet something answered; "
            "not sending it the API token"
        )
    if not owners <= mine:
        strangers = ", ".join(str(uid) for uid in sorted(owners - mine))
        raise ForeignListener(
            f"port {peer[1]} is held by uid {strangers}, not by you (uid {os.getuid()}); "
            "not sending it the API token (is the node running?)"
        )


def _listeners(port: int, proc_net: Path) -> list[Listener] | None:
    """The listening TCP sockets on `port`, IPv4 and IPv6; None where the system cannot tell."""
    try:
        return [
            found for family in (socket.AF_INET, socket.AF_INET6) for found in _diag(family, port)
        ]
    except (OSError, AttributeError):  # AttributeError: no AF_NETLINK off Linux
        pass
    tables = [proc_net / "tcp", proc_net / "tcp6"]
    if not any(table.exists() for table in tables):
        return None
    return [found for table in tables for found in _proc(table, port)]


def _diag(family: int, port: int) -> list[Listener]:
    """Ask sock_diag for `family`'s listening TCP sockets (the kernel walks only those)."""
    request = DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
    header = NLMSG_HEADER.pack(
        NLMSG_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST_DUMP, 1, 0
    )
    found: list[Listener] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as netlink:
        netlink.send(header + request)
        while True:
            data = netlink.recv(1 << 16)
            offset = 0
            while offset < len(data):
                length, kind = NLMSG_HEADER.unpack_from(data, offset)[:2]
                body = offset + NLMSG_HEADER.size
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", data, body)[0]
                    raise OSError(error, os.strerror(error))
                answer_family, _, _, _, sport, _, src, _ = DIAG_ANSWER.unpack_from(data, body)
                if sport == port:
                    raw = src[:4] if answer_family == socket.AF_INET else src
                    uid = struct.unpack_from("=I", data, body + DIAG_UID_AT)[0]
                    found.append((_unmapped(ipaddress.ip_address(raw)), uid))
                offset += (length + 3) & ~3


def _proc(table: Path, port: int) -> list[Listener]:
    """The same from one /proc/net table."""
    try:
        lines = table.read_text().splitlines()[1:]
    except FileNotFoundError:
        return []
    found: list[Listener] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or int(fields[3], 16) != TCP_LISTEN:
            continue
        local_hex, _, port_hex = fields[1].partition(":")
        if int(port_hex, 16) == port:
            found.append((_unmapped(_decode(local_hex)), int(fields[7])))
    return found


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
