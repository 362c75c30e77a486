"""Gossip delivery, latency and CPU: N real nodes on loopback, 100 announcements.

    python benchmarks/gossip.py [--nodes 10 30] [--messages 100] [--processes] [--profile]
                                [--floor] [--baseline DIR]
                                [--reference-python /tmp/iroh035/bin/python]

Each node joins through the ticket of a random earlier node. Announcements are published from
random origins, 20 ms apart; for each cluster size the script prints the delivery ratio,
p50/p99/max latency from publish to receipt, and CPU per delivered envelope: `recv us` is the
receive path alone (parse, engine, actions; thread CPU around each frame, so the bindings' Rust
threads do not count), `cpu us` the whole process (or all processes) over the broadcast phase,
heartbeats and transport included. `frames` counts gossip frames received per delivery, `grafts`
the GRAFTs sent over the broadcast phase (each one a tree cut or a copy that came late).

By default all nodes share one Python process (and its GIL), so latencies include queueing
behind the other nodes' work: an upper bound for separate hosts. `--processes` also runs each
node in its own process. `--reference-python` runs the Rust iroh-gossip 0.35 anchor
(`--reference-script`) in the same run for the same sizes (see ../shared/anchors/README.md).
`--baseline DIR` runs the same measurements with the p2pnode sources in DIR (a checkout of
another commit) just before this tree's, each one-process run in a fresh interpreter.

`--floor` measures what a frame costs through the bindings and trio alone (two endpoints in one
process, one small frame every 2 ms, nothing else running): the least a delivery can cost.

`--profile` says where the main thread's CPU goes over the broadcast phase, per delivery: each
trio task's CPU (thread time around every task step, so the bindings' Rust threads do not count),
the scheduler's share outside task steps, the other threads' (process minus main thread), the
bindings' calls, and the frames sent by type. It costs two clock reads per task step.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import iroh
import trio
from pydantic import BaseModel

import tickets
from p2pnode.api.app import serve_node_api
from p2pnode.config import Settings
from p2pnode.gossip.service import GOSSIP_ALPN, GossipService, Received
from p2pnode.net import bridge
from p2pnode.net.framing import FrameReader, write_frames
from p2pnode.node import Node, StartupError

SETTLE_S = 3.0
GRACE_S = 15.0
GAP_S = 0.02  # between announcements
JOIN_ATTEMPTS = 3
REFERENCE_SCRIPT = Path(__file__).resolve().parents[2] / "shared/anchors/gossip_iroh035.py"
HERE = Path(__file__).resolve().parents[1]


class Probe(BaseModel):
    KIND: ClassVar[str] = "bench.probe"
    n: int
    sent_at: float


class Profile(BaseModel):
    """Where the main thread's CPU went (see --profile)."""

    tasks: dict[str, float] = {}  # task name -> CPU seconds in its steps
    steps: dict[str, int] = {}
    thread_cpu_s: float = 0.0
    calls: dict[str, int] = {}  # bindings' method -> calls
    sent: dict[str, int] = {}  # gossip message type -> frames sent


class Result(BaseModel):
    """What one run (or one node process) measured; results of processes add up."""

    expected: int = 0
    latencies: list[float] = []
    receive_cpu_s: float = 0.0
    frames: int = 0
    grafts: int = 0
    process_cpu_s: float = 0.0
    profile: Profile | None = None

    def add(self, other: Result) -> None:
        self.expected += other.expected
        self.latencies += other.latencies
        self.receive_cpu_s += other.receive_cpu_s
        self.frames += other.frames
        self.grafts += other.grafts
        self.process_cpu_s += other.process_cpu_s


@contextmanager
def timed_receive_path(result: Result) -> Iterator[None]:
    """Add the thread CPU of every gossip frame's receive path in this process to `result`."""
    original = GossipService._on_frame

    def timed(self: GossipService, peer_id: str, frame: bytes) -> None:
        start = time.thread_time()
        try:
            original(self, peer_id, frame)
        finally:
            result.receive_cpu_s += time.thread_time() - start
            result.frames += 1

    GossipService._on_frame = timed  # type: ignore[method-assign]
    try:
        yield
    finally:
        GossipService._on_frame = original  # type: ignore[method-assign]


class _TaskCPU(trio.abc.Instrument):
    """Thread CPU of every task step, by task name."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.started = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.started = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        name = task.name.removeprefix("p2pnode.")
        self.profile.tasks[name] = (
            self.profile.tasks.get(name, 0.0) + time.thread_time() - self.started
        )
        self.profile.steps[name] = self.profile.steps.get(name, 0) + 1


@contextmanager
def profiled(nodes: list[Node], on: bool) -> Iterator[Profile | None]:
    """A `Profile` of the block when `on` (else None)."""
    if not on:
        yield None
        return
    profile = Profile()
    calls: Counter[str] = Counter()
    methods = [(iroh.RecvStream, "read"), (iroh.SendStream, "write_all")]
    originals = [getattr(cls, name) for cls, name in methods]

    def counting(name: str, method: Any) -> Any:
        def call(*args: Any) -> Any:
            calls[name] += 1
            return method(*args)

        return call

    for (cls, name), method in zip(methods, originals, strict=True):
        setattr(cls, name, counting(name, method))
    instrument = _TaskCPU(profile)
    sent_before = sent_by_type(nodes)
    trio.lowlevel.add_instrument(instrument)
    started = instrument.started = time.thread_time()  # this task's step is under way
    try:
        yield profile
    finally:
        profile.thread_cpu_s = time.thread_time() - started
        trio.lowlevel.remove_instrument(instrument)
        for (cls, name), method in zip(methods, originals, strict=True):
            setattr(cls, name, method)
        profile.calls = dict(calls)
        profile.sent = dict(sent_by_type(nodes) - sent_before)


def sent_by_type(nodes: list[Node]) -> Counter[str]:
    sent: Counter[str] = Counter()
    for node in nodes:
        if (stats := node.gossip.stats()) is not None:
            sent.update(stats.sent_by_type)
    return sent


def new_node(data_dir: Path) -> Node:
    settings = Settings(data_dir=data_dir, http_port=0, bind="127.0.0.1:0", relay="disabled")
    return Node(settings, serve_node_api)


async def start(
    nursery: trio.Nursery, data_dir: Path, node_tickets: list[str], rng: random.Random
) -> Node:
    """A node joined through a random one of `node_tickets` (or alone); a join that fails on the
    loaded machine (a handshake timing out) is tried again through another."""
    for attempt in range(JOIN_ATTEMPTS):
        node = new_node(data_dir / str(attempt))
        join = tickets.parse_join(rng.choice(node_tickets)) if node_tickets else None
        failed: list[BaseException] = []
        try:
            await nursery.start(functools.partial(node.run, join_ticket=join))
        except* StartupError as group:  # the node's nursery wraps it
            failed += group.exceptions
        if not failed:
            return node
        print(f"join failed, trying again: {failed[0]}", file=sys.stderr)
    raise StartupError(f"no join in {JOIN_ATTEMPTS} attempts")


def grafts(nodes: list[Node]) -> int:
    return sent_by_type(nodes)["graft"]


async def listen(node: Node, result: Result, on_probe: Any) -> None:
    async for event in node.gossip.subscribe():
        if isinstance(event, Received) and event.kind == Probe.KIND:
            result.latencies.append(time.time() - event.payload["sent_at"])
            on_probe()


# -- all nodes in this process ----------------------------------------------------------------


async def run_in_process(size: int, messages: int, work: Path, profile: bool) -> Result:
    rng = random.Random(size)
    result = Result(expected=messages * (size - 1))
    all_heard = trio.Event()

    def heard() -> None:
        if len(result.latencies) == result.expected:
            all_heard.set()

    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for i in range(size):
            node = await start(nursery, work / f"{size}-{i}", [n.join_ticket() for n in nodes], rng)
            nursery.start_soon(listen, node, result, heard)
            nodes.append(node)
        await trio.sleep(SETTLE_S)  # let the views form, as in a running cluster
        cpu, grafted = time.process_time(), grafts(nodes)
        with timed_receive_path(result), profiled(nodes, profile) as result.profile:
            for n in range(messages):
                rng.choice(nodes).gossip.publish(Probe(n=n, sent_at=time.time()))
                await trio.sleep(GAP_S)
            with trio.move_on_after(GRACE_S):
                await all_heard.wait()
        result.process_cpu_s = time.process_time() - cpu
        result.grafts = grafts(nodes) - grafted
        nursery.cancel_scope.cancel()
    return result


# -- each node in its own process -------------------------------------------------------------


class Plan(BaseModel):
    """What the parent tells a node process once all have started."""

    start_at: float  # wall clock: the processes share the machine's clock
    publish: list[int]  # announcement numbers this node publishes, at start_at + n * GAP_S
    expected: int  # announcements from others


async def node_process(data_dir: Path, ticket: str | None) -> None:
    """One node: print its ticket, read a `Plan` on stdin, run it, print a `Result`."""
    result = Result()
    done = trio.Event()

    def heard() -> None:
        if len(result.latencies) == result.expected:
            done.set()

    async with trio.open_nursery() as nursery:
        node = await start(nursery, data_dir, [ticket] if ticket else [], random.Random())
        nursery.start_soon(listen, node, result, heard)
        print(node.join_ticket(), flush=True)
        plan = Plan.model_validate_json(await trio.to_thread.run_sync(sys.stdin.readline))
        result.expected = plan.expected
        await trio.sleep_until(trio.current_time() + plan.start_at - time.time())
        cpu, grafted = time.process_time(), grafts([node])
        with timed_receive_path(result):
            for n in plan.publish:
                await trio.sleep_until(
                    trio.current_time() + plan.start_at + n * GAP_S - time.time()
                )
                node.gossip.publish(Probe(n=n, sent_at=time.time()))
            last_publish = plan.start_at + (max(plan.publish, default=0) + 1) * GAP_S
            with trio.move_on_after(last_publish + GRACE_S - time.time()):
                if plan.expected:
                    await done.wait()
        result.process_cpu_s = time.process_time() - cpu
        result.grafts = grafts([node]) - grafted
        print(result.model_dump_json(), flush=True)
        nursery.cancel_scope.cancel()


def measure_in_process(sources: Path, size: int, messages: int, profile: bool) -> Result:
    """`run_in_process` in a fresh interpreter that imports p2pnode from `sources`."""
    with tempfile.TemporaryDirectory(prefix="p2pnode-gossip-") as tmp:
        command = [sys.executable, __file__, "--in-process", str(size), "--work", tmp]
        done = subprocess.run(
            [*command, "--messages", str(messages), *(["--profile"] if profile else [])],
            cwd=sources,
            env={**os.environ, "PYTHONPATH": str(sources)},
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
    return Result.model_validate_json(done.stdout.splitlines()[-1])


def run_processes(sources: Path, size: int, messages: int, work: Path) -> Result:
    rng = random.Random(size)
    origins = [rng.randrange(size) for _ in range(messages)]
    procs: list[subprocess.Popen[str]] = []
    node_tickets: list[str] = []
    try:
        for i in range(size):
            join = ["--join", rng.choice(node_tickets)] if node_tickets else []
            proc = subprocess.Popen(
                [sys.executable, __file__, "--node-process", str(work / f"p{size}-{i}"), *join],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=sources,
                env={**os.environ, "PYTHONPATH": str(sources)},
            )
            procs.append(proc)
            assert proc.stdout is not None
            node_tickets.append(proc.stdout.readline().strip())
        time.sleep(SETTLE_S)  # let the views form, as in a running cluster
        start_at = time.time() + 0.5
        for i, proc in enumerate(procs):
            mine = [n for n, origin in enumerate(origins) if origin == i]
            plan = Plan(start_at=start_at, publish=mine, expected=messages - len(mine))
            assert proc.stdin is not None
            proc.stdin.write(plan.model_dump_json() + "\n")
            proc.stdin.flush()
        total = Result()
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            total.add(Result.model_validate_json(line) if line else Result())
        total.expected = messages * (size - 1)
        return total
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


# -- what a frame costs at least ----------------------------------------------------------------


async def frame_floor(frames: int) -> tuple[float, float]:
    """Main-thread and process CPU per frame of 240 bytes from one endpoint to another in this
    process, one frame at a time (2 ms apart), through `write_frames` and `FrameReader` as gossip
    sends and reads them."""
    bridge.install()
    options = iroh.EndpointOptions(
        preset=iroh.preset_minimal(), bind_addr="127.0.0.1:0", alpns=[GOSSIP_ALPN]
    )
    server, client = await iroh.Endpoint.bind(options), await iroh.Endpoint.bind(options)
    sides: list[iroh.Connection] = []

    async def accept() -> None:
        incoming = await server.accept_next()
        assert incoming is not None
        sides.append(await (await incoming.accept()).connect())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        connection = await client.connect(server.addr(), GOSSIP_ALPN)
    send = await connection.open_uni()
    await write_frames(send, [b"warm-up"])
    reader = FrameReader(await sides[0].accept_uni())
    await reader.next()

    async def write() -> None:
        for _ in range(frames):
            await write_frames(send, [b"f" * 240])
            await trio.sleep(0.002)

    thread, process = time.thread_time(), time.process_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        for _ in range(frames):
            await reader.next()
    thread, process = time.thread_time() - thread, time.process_time() - process
    await client.close()
    await server.close()
    return thread / frames, process / frames


# -- the reference ----------------------------------------------------------------------------


def run_reference(python: str, script: Path, size: int, messages: int) -> dict[str, float]:
    """The anchor's one summary line, parsed: delivery ratio and p50/p99/max in ms."""
    out = subprocess.run(
        [python, str(script), str(size), str(messages)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    ).stdout
    match = re.search(r"deliveries=(\d+)/(\d+) p50=([\d.]+)ms p99=([\d.]+)ms max=([\d.]+)ms", out)
    if match is None:
        return {}
    got, expected, p50, p99, top = (float(g) for g in match.groups())
    return {"delivered": got / expected, "p50": p50, "p99": p99, "max": top}


# -- report -----------------------------------------------------------------------------------


HEADER = (
    f"{'run':<22} {'nodes':>5} {'delivered':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    f" {'recv us':>8} {'cpu us':>8} {'frames':>7} {'grafts':>7}"
)


def row(name: str, size: int, result: Result) -> str:
    latencies = result.latencies
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    delivered = max(len(latencies), 1)
    receive_us, cpu_us = (s / delivered * 1e6 for s in (result.receive_cpu_s, result.process_cpu_s))
    return (
        f"{name:<22} {size:>5} {len(latencies) / result.expected:>10.1%} {q[49] * 1e3:>8.1f}"
        f" {q[98] * 1e3:>8.1f} {max(latencies, default=0) * 1e3:>8.1f}"
        f" {receive_us:>8.0f} {cpu_us:>8.0f}"
        f" {result.frames / delivered:>7.2f} {result.grafts:>7}"
    )


def profile_rows(result: Result) -> list[str]:
    """The --profile breakdown, per delivery."""
    profile = result.profile
    if profile is None:
        return []
    per = 1e6 / max(len(result.latencies), 1)
    tasks = sorted(profile.tasks.items(), key=lambda item: -item[1])
    in_steps = sum(profile.tasks.values())
    lines = [
        f"  main thread {profile.thread_cpu_s * per:.0f} us per delivery (the receive path"
        f" {result.receive_cpu_s * per:.0f} us of it, in the task that reads), other threads"
        f" {(result.process_cpu_s - profile.thread_cpu_s) * per:.0f} us",
        *(
            f"    {cpu * per:6.0f} us {profile.steps[name] * per / 1e6:6.2f} steps  {name}"
            for name, cpu in tasks[:12]
        ),
        f"    {sum(cpu for _, cpu in tasks[12:]) * per:6.0f} us  other tasks",
        f"    {(profile.thread_cpu_s - in_steps) * per:6.0f} us"
        f" {sum(profile.steps.values()) * per / 1e6:6.2f} steps in all: outside task steps"
        " (scheduler, I/O wait, wakeups from Rust threads)",
        "  per delivery: "
        + ", ".join(f"{n * per / 1e6:.2f} {name}" for name, n in sorted(profile.calls.items()))
        + " calls; frames sent "
        + ", ".join(f"{n * per / 1e6:.3f} {kind}" for kind, n in sorted(profile.sent.items())),
    ]
    return lines


def reference_row(size: int, ref: dict[str, float]) -> str:
    if not ref:
        return f"{'iroh-gossip 0.35':<22} {size:>5} {'failed':>10}"
    return (
        f"{'iroh-gossip 0.35':<22} {size:>5} {ref['delivered']:>10.1%} {ref['p50']:>8.1f}"
        f" {ref['p99']:>8.1f} {ref['max']:>8.1f}"
    )


def main(args: argparse.Namespace) -> None:
    if args.floor:
        thread, process = trio.run(frame_floor, 1000)
        print(
            f"a frame through the bindings and trio alone: main thread {thread * 1e6:.0f} us,"
            f" process {process * 1e6:.0f} us"
        )
    trees = [("p2pnode", HERE)]
    if args.baseline is not None:
        trees.insert(0, ("baseline", args.baseline.resolve()))
    if args.nodes:
        print(HEADER)
    with tempfile.TemporaryDirectory(prefix="p2pnode-gossip-") as tmp:
        for size in args.nodes:
            for name, sources in trees:
                result = measure_in_process(sources, size, args.messages, args.profile)
                print(row(f"{name}, one process", size, result), flush=True)
                for line in profile_rows(result):
                    print(line, flush=True)
            for name, sources in trees if args.processes else []:
                result = run_processes(sources, size, args.messages, Path(tmp) / name)
                print(row(f"{name}, processes", size, result), flush=True)
            if args.reference_python:
                ref = run_reference(
                    args.reference_python, args.reference_script, size, args.messages
                )
                print(reference_row(size, ref), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, nargs="*", default=[10, 30])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--processes", action="store_true", help="also one process per node")
    parser.add_argument("--reference-python", help="python with iroh==0.35.0 installed")
    parser.add_argument("--reference-script", type=Path, default=REFERENCE_SCRIPT)
    parser.add_argument("--baseline", type=Path, help="p2pnode sources to measure first")
    parser.add_argument("--profile", action="store_true", help="where the CPU goes")
    parser.add_argument("--floor", action="store_true", help="what a frame costs at least")
    parser.add_argument("--node-process", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--join", help=argparse.SUPPRESS)
    parser.add_argument("--in-process", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node_process:
        trio.run(node_process, args.node_process, args.join)
    elif args.in_process:
        measured = trio.run(run_in_process, args.in_process, args.messages, args.work, args.profile)
        print(measured.model_dump_json())
    else:
        main(args)
