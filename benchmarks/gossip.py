"""Gossip delivery and latency: N real nodes on loopback (one process), 100 announcements.

    python benchmarks/gossip.py [--nodes 10 30] [--messages 100]

Each node joins through the ticket of a random earlier node. Announcements are published from
random origins, 20 ms apart; for each cluster size the script prints the delivery ratio and
p50/p99/max latency from publish to receipt. All nodes share one Python process (and its GIL),
so latencies include queueing behind the other nodes' work: an upper bound for separate hosts.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import trio
from pydantic import BaseModel

import tickets
from p2pnode.api.app import serve_node_api
from p2pnode.config import Settings
from p2pnode.gossip.service import Received
from p2pnode.node import Node

SETTLE_S = 3.0
GRACE_S = 15.0


class Probe(BaseModel):
    KIND: ClassVar[str] = "bench.probe"
    n: int
    sent_at: float


async def run(size: int, messages: int, work: Path) -> tuple[float, list[float]]:
    rng = random.Random(size)
    latencies: list[float] = []
    heard = 0
    expected = messages * (size - 1)
    all_heard = trio.Event()

    async def listen(node: Node) -> None:
        nonlocal heard
        async for event in node.gossip.subscribe():
            if isinstance(event, Received) and event.kind == Probe.KIND:
                latencies.append(time.time() - event.payload["sent_at"])
                heard += 1
                if heard == expected:
                    all_heard.set()

    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for i in range(size):
            node = Node(
                Settings(
                    data_dir=work / f"{size}-{i}", http_port=0, bind="127.0.0.1:0", relay="disabled"
                ),
                serve_node_api,
            )
            ticket = tickets.parse_join(rng.choice(nodes).join_ticket()) if nodes else None
            await nursery.start(
                lambda task_status, node=node, ticket=ticket: node.run(
                    join_ticket=ticket, task_status=task_status
                )
            )
            nursery.start_soon(listen, node)
            nodes.append(node)
        await trio.sleep(SETTLE_S)  # let the views form, as in a running cluster
        for n in range(messages):
            rng.choice(nodes).gossip.publish(Probe(n=n, sent_at=time.time()))
            await trio.sleep(0.02)
        with trio.move_on_after(GRACE_S):
            await all_heard.wait()
        nursery.cancel_scope.cancel()
    return heard / expected, latencies


def main(sizes: list[int], messages: int) -> None:
    print(f"{'nodes':>5} {'delivered':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    with tempfile.TemporaryDirectory(prefix="p2pnode-gossip-") as tmp:
        for size in sizes:
            ratio, latencies = trio.run(run, size, messages, Path(tmp))
            q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
            print(
                f"{size:>5} {ratio:>10.1%} {q[49] * 1e3:>8.1f} {q[98] * 1e3:>8.1f}"
                f" {max(latencies, default=0) * 1e3:>8.1f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--messages", type=int, default=100)
    args = parser.parse_args()
    main(args.nodes, args.messages)
