"""Plumtree at scale: the sans-IO gossip engine simulated with 100 and 1000 nodes.

    python benchmarks/gossip_sim.py [--nodes 100 1000] [--warm-up 20] [--broadcasts 50]

The network of `p2pnode.gossip.sim` (seeded, every message through the wire codec, signatures
verified) grows to N nodes and ticks (anti-entropy, reach-outs) until its overlay is connected
(`ticks`). Then, with no more ticks, `--warm-up` broadcasts from random origins let the eager
links settle into a tree, and `--broadcasts` more (in bursts of 5 in flight at once) are
measured. Printed per size: the delivery ratio (by the broadcast tree alone), and messages sent
per node per broadcast: eager full copies ("gossip"), lazy announcements (IHAVE frames), GRAFT
and PRUNE, and the duplicates received. Target: under 2 eager copies per node per broadcast in
steady state.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from p2pnode.gossip.sim import Sim

BURST = 5
MAX_SETTLE_TICKS = 100


def totals(sim: Sim) -> Counter[str]:
    counts: Counter[str] = Counter()
    for node in sim.alive():
        stats = sim.engines[node].stats()
        counts.update(stats.sent_by_type)
        counts["duplicates"] += stats.duplicates
    return counts


def broadcast(sim: Sim, count: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < count:
        for _ in range(min(BURST, count - len(ids))):
            ids.append(sim.publish(sim.rng.choice(sim.alive()), len(ids), settle=False))
        sim.run()
    return ids


def connected(sim: Sim) -> bool:
    """Whether the neighbor graph spans every node."""
    graph = {node: set(sim.engines[node].stats().active) for node in sim.alive()}
    start = next(iter(graph))
    seen, todo = {start}, [start]
    while todo:
        for peer in graph[todo.pop()] - seen:
            seen.add(peer)
            todo.append(peer)
    return len(seen) == len(graph)


def measure(size: int, warm_up: int, broadcasts: int, seed: int) -> str:
    started = time.perf_counter()
    sim = Sim(seed)
    sim.grow(size)
    while not connected(sim) and sim.ticks < MAX_SETTLE_TICKS:
        sim.tick()  # fast joins can leave the overlay cut in parts until members reach out
    broadcast(sim, warm_up)
    before = totals(sim)
    ids = broadcast(sim, broadcasts)
    sent = totals(sim) - before
    got = sum(
        1 for node in sim.alive() for i in ids if sim.delivered[node][i] and sim.origin[i] != node
    )
    per = {
        k: sent[k] / (size * broadcasts)
        for k in ("gossip", "ihave", "graft", "prune", "duplicates")
    }
    return (
        f"{size:>6} {got / (broadcasts * (size - 1)):>10.2%}"
        f" {per['gossip']:>7.2f} {per['ihave']:>7.2f}"
        f" {per['graft']:>7.3f} {per['prune']:>7.3f} {per['duplicates']:>7.3f}"
        f" {sim.ticks:>6} {time.perf_counter() - started:>7.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--warm-up", type=int, default=20)
    parser.add_argument("--broadcasts", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("per node per broadcast, after the warm-up:")
    print(
        f"{'nodes':>6} {'delivered':>10} {'eager':>7} {'ihave':>7} {'graft':>7} {'prune':>7}"
        f" {'dups':>7} {'ticks':>6} {'secs':>7}"
    )
    for size in args.nodes:
        print(measure(size, args.warm_up, args.broadcasts, args.seed), flush=True)


if __name__ == "__main__":
    main()
