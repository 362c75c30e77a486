"""Jobs: records, durable queue, claims and leases, the worker loop."""
