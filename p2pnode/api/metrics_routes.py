"""`GET /metrics`: the node in Prometheus text format, behind the API token like every route.

Counters that only exist where things happen live on the node's registry (`p2pnode.metrics`);
everything the node already keeps is read here at scrape time into a one-off registry, so no
count is kept twice and several nodes in one process never share a metric.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from p2pnode.node import Node


class _Snapshot(Collector):
    """Families read once, served once."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


async def node_families(node: Node) -> list[Metric]:
    """What the node keeps anyway, as metric families."""
    jobs = GaugeMetricFamily(
        "p2pnode_jobs", "Jobs this node is the origin of, by state.", labels=["state"]
    )
    for job_state, count in node.jobs.store.count_by_state().items():
        jobs.add_metric([job_state.value], count)

    families: list[Metric] = [jobs]
    if (gossip := node.gossip.stats()) is not None:
        for name, value, what in (
            ("sent", gossip.sent, "Gossip envelopes sent to neighbors."),
            ("received", gossip.received, "Gossip envelopes received from neighbors."),
            ("delivered", gossip.delivered, "New gossip envelopes delivered to this node."),
        ):
            families.append(CounterMetricFamily(f"p2pnode_gossip_envelopes_{name}", what, value))
        dropped = CounterMetricFamily(
            "p2pnode_gossip_envelopes_dropped",
            "Gossip envelopes and frames dropped, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(gossip.dropped.items()):
            dropped.add_metric([reason], count)
        families.append(dropped)

    provider = node.blobs.provider
    families.append(
        CounterMetricFamily(
            "p2pnode_blob_served_bytes",
            "Blob bytes this node sent to fetchers.",
            provider.served_bytes,
        )
    )
    disk = await node.disk()
    for name, value, what in (
        ("p2pnode_blob_store_bytes", disk.store_bytes, "Bytes of the blobs in the store."),
        ("p2pnode_blob_store_blobs", disk.store_blobs, "Blobs in the store."),
        ("p2pnode_disk_free_bytes", disk.free_bytes, "Free bytes of the store's filesystem."),
        ("p2pnode_disk_total_bytes", disk.total_bytes, "Size of the store's filesystem."),
    ):
        families.append(GaugeMetricFamily(name, what, value))

    members = GaugeMetricFamily(
        "p2pnode_members", "Cluster members this node knows, by state.", labels=["state"]
    )
    states = Counter(m.state for m in node.members())
    for state in ("connected", "idle", "down"):
        members.add_metric([state], states[state])
    families.append(members)

    age = GaugeMetricFamily(
        "p2pnode_worker_heartbeat_age_seconds",
        "Seconds since each worker's latest heartbeat was sent, as this node heard it.",
        labels=["worker"],
    )
    for worker in node.workers.workers():
        age.add_metric([worker.node_id], worker.age_s)
    families.append(age)
    return families


def metrics_router(node: Node) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format. A scraper sends the API token as a bearer token."""
        snapshot = CollectorRegistry()
        snapshot.register(_Snapshot(await node_families(node)))
        body = generate_latest(node.metrics.registry) + generate_latest(snapshot)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
