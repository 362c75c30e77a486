"""Where a peer can be reached, as every layer passes it around (JSON, tickets, iroh)."""

from __future__ import annotations

import iroh
from pydantic import BaseModel

import tickets
from p2pnode.ids import NodeId, NodeIdField


class PeerAddr(BaseModel):
    """Where a peer can be reached: the JSON twin of `tickets.NodeAddr`."""

    node_id: NodeIdField
    relay_url: str | None = None
    direct_addresses: list[str] = []

    @classmethod
    def from_ticket(cls, addr: tickets.NodeAddr) -> PeerAddr:
        return cls(
            node_id=NodeId(addr.node_id.hex()),
            relay_url=addr.relay_url,
            direct_addresses=list(addr.direct_addresses),
        )

    @classmethod
    def from_endpoint(cls, addr: iroh.EndpointAddr, relay_url: str | None) -> PeerAddr:
        return cls(
            node_id=node_id_of(addr.id()),
            relay_url=addr.relay_url() or relay_url,
            # Link-local IPv6 addresses carry a zone id that only means something on this host.
            direct_addresses=[a for a in addr.direct_addresses() if "%" not in a],
        )

    def to_ticket(self) -> tickets.NodeAddr:
        return tickets.NodeAddr(
            node_id=bytes.fromhex(self.node_id),
            relay_url=self.relay_url,
            direct_addresses=self.direct_addresses,
        )

    def to_endpoint(self) -> iroh.EndpointAddr:
        return iroh.EndpointAddr(
            iroh.EndpointId.from_bytes(bytes.fromhex(self.node_id)),
            self.relay_url,
            self.direct_addresses,
        )


def node_id_of(key: iroh.EndpointId) -> NodeId:
    """The id of an iroh key, as every layer passes it."""
    return NodeId(key.to_bytes().hex())


def remote_node_id(connection: iroh.Connection) -> NodeId:
    """Who is at the other end of a connection (authenticated by its TLS handshake)."""
    return node_id_of(connection.remote_id())
