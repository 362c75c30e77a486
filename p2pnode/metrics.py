"""Counters that must be counted where things happen, on the node's own Prometheus registry.

Everything the node already keeps (jobs by state, gossip counts, the blob store, members,
heartbeats) is read at scrape time by the API's collector (`p2pnode/api/metrics_routes.py`);
this object holds only what nothing else remembers. One per node, handed to the services that
count: several nodes run in one test process, so nothing here is global.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Job runs last from milliseconds (a tiny WASI module) to hours (a long workflow).
RUN_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 7200.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.claims = Counter(
            "p2pnode_job_claims",
            "Claims this node asked for as a worker, by outcome "
            "(granted, backoff, refused, unreachable).",
            ["result"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "p2pnode_job_attempts",
            "Job attempts this node ran as a worker, by outcome (succeeded, failed, abandoned).",
            ["result"],
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "p2pnode_job_run_duration_seconds",
            "Time this node spent running one job attempt (fetching inputs and executing).",
            buckets=RUN_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.fetched_bytes = Counter(
            "p2pnode_blob_fetched_bytes",
            "Verified blob bytes this node downloaded from providers.",
            registry=self.registry,
        )
        self.fetches = Counter(
            "p2pnode_blob_fetches",
            "Blob downloads this node finished, by outcome (fetched, failed).",
            ["result"],
            registry=self.registry,
        )
