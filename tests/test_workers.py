"""The workers view: every node gossips a heartbeat, every member lists every worker (issue 13.1),
and a job whose executor nobody offers says so (issue 8.7). Real in-process nodes on loopback."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from pydantic import BaseModel

import tickets
from p2pnode import __version__
from p2pnode.api.app import serve_node_api
from p2pnode.config import Settings
from p2pnode.executors.base import ExecutorKind
from p2pnode.gossip.service import GossipEvent, Received
from p2pnode.jobs.heartbeat import DOWN_AFTER_S, HEARTBEAT_INTERVAL_S, ExecutorOffer, Heartbeat
from p2pnode.jobs.model import JobState
from p2pnode.jobs.service import JobSubmission
from p2pnode.jobs.workers import Workers
from p2pnode.node import Node
from tests.conftest import cli_argv
from tests.nodeproc import NodeProcess, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NO_FLAWLESS = "http://127.0.0.1:9"


def api(node: Node) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=node.api_url, headers={"Authorization": f"Bearer {node.api_token}"}, timeout=30
    )


async def workers(node: Node) -> dict[str, dict[str, Any]]:
    async with api(node) as client:
        reply = await client.get("/workers")
    assert reply.status_code == 200, reply.text
    return {w["node_id"]: w for w in reply.json()}


async def eventually(condition: Callable[[], Any], timeout: float = 30.0) -> None:
    """Poll what no event announces (another node's heartbeat), up to a bounded deadline."""
    with trio.fail_after(timeout):
        while not await condition():
            await trio.sleep(0.1)


async def test_two_nodes_list_each_other_with_executors_and_slots(start_node) -> None:
    a = await start_node(max_jobs=3, flawless_url=NO_FLAWLESS)
    b = await start_node(join=a.join_ticket(), max_jobs=0, flawless_url=NO_FLAWLESS)

    async def both_see_both() -> bool:
        return len(await workers(a)) == len(await workers(b)) == 2

    await eventually(both_see_both)
    seen = await workers(b)
    offers = [{"kind": "wasi", "answers": True}, {"kind": "flawless", "answers": False}]
    assert seen[a.id]["state"] == "ready"
    assert seen[a.id]["executors"] == offers
    assert (seen[a.id]["slots_total"], seen[a.id]["slots_free"]) == (3, 3)
    assert seen[b.id]["state"] == "busy"  # no slot at all: it takes no job
    assert seen[b.id]["slots_total"] == 0 and seen[b.id]["labels"] == {}
    assert seen[a.id]["version"] and seen[a.id]["uptime_s"] >= 0


async def test_heartbeats_replace_each_other_in_gossip(start_node) -> None:
    a = await start_node()
    b = await start_node(join=a.join_ticket())

    async def a_hears_b() -> bool:
        return b.id in await workers(a)

    await eventually(a_hears_b)
    first = (await workers(a))[b.id]["sent_at"]

    async def two_more_from_b() -> bool:
        return (await workers(a))[b.id]["sent_at"] > first + 1.5 * HEARTBEAT_INTERVAL_S

    await eventually(two_more_from_b)
    for node in (a, b):
        stats = node.gossip.stats()
        assert stats is not None and stats.live <= 2, stats  # one heartbeat per node, no history


async def test_a_stopped_node_turns_down(start_node, nursery, tmp_path: Path) -> None:
    a = await start_node()
    b = Node(
        Settings(data_dir=tmp_path / "b", http_port=0, bind="127.0.0.1:0", relay="disabled"),
        serve_node_api,
    )
    ticket = tickets.parse_join(a.join_ticket())
    scope = trio.CancelScope()

    async def run_b(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await b.run(join_ticket=ticket, task_status=task_status)

    await nursery.start(run_b)

    async def b_is(state: str) -> bool:
        return (await workers(a)).get(b.id, {}).get("state") == state

    await eventually(lambda: b_is("ready"))
    scope.cancel()
    await eventually(lambda: b_is("down"), timeout=DOWN_AFTER_S + 30)
    assert (await workers(a))[a.id]["state"] == "ready"


async def test_a_forged_heartbeat_for_another_node_is_ignored(start_node, caplog) -> None:
    a = await start_node()
    b = await start_node(join=a.join_ticket())
    forged_id = "ab" * 32
    forged = heartbeat(forged_id, time.time(), kind="flawless", slots=8)

    async def a_hears_b() -> bool:
        return b.id in await workers(a)

    await eventually(a_hears_b)
    b.gossip.publish(forged)
    after = time.time()

    async def a_hears_b_after_the_forgery() -> bool:  # b's gossip to a arrives in order
        return (await workers(a))[b.id]["sent_at"] > after

    await eventually(a_hears_b_after_the_forgery)
    assert forged_id not in await workers(a)
    assert f"ignored a heartbeat for {forged_id[:10]} signed by {b.id[:10]}" in caplog.text


async def test_a_job_nobody_can_run_says_so_in_show_and_wait(start_node) -> None:
    node = await start_node(flawless_url=NO_FLAWLESS)
    job = await node.jobs.submit_files(
        JobSubmission(module=EXAMPLES / "echo.wat", workflow="echo", input=1, executor="flawless")
    )
    async with api(node) as client:
        shown = (await client.get(f"/jobs/{job.id}")).json()
        waited = (await client.post(f"/jobs/{job.id}/wait", params={"timeout": 0})).json()
    assert shown["state"] == waited["state"] == JobState.PENDING.value
    for answer in (shown, waited):
        assert "no live worker offers the flawless executor" in answer["waiting_for"]

    show = await trio.run_process(
        [*cli_argv(node), "job", "show", job.id], capture_stdout=True, capture_stderr=True
    )
    assert "waiting   no live worker offers the flawless executor" in show.stdout.decode()

    wait = await trio.lowlevel.open_process(
        [*cli_argv(node), "job", "wait", job.id], stderr=subprocess.PIPE
    )
    told = b""
    try:
        assert wait.stderr is not None
        with trio.fail_after(60):
            while b"\n" not in told:
                chunk = await wait.stderr.receive_some()
                assert chunk, f"job wait exited: {told!r}"
                told += chunk
    finally:
        wait.kill()
        await wait.wait()
    assert told.decode().startswith("waiting: no live worker offers the flawless executor")


async def test_a_job_that_runs_has_no_waiting_for(start_node) -> None:
    node = await start_node()
    job = await node.jobs.submit_files(JobSubmission(module=EXAMPLES / "echo.wat", input=1))
    async with api(node) as client:
        done = (await client.post(f"/jobs/{job.id}/wait", params={"timeout": 30})).json()
    assert done["state"] == JobState.SUCCEEDED.value and done["waiting_for"] is None


class LocalGossip:
    """Gossip as the workers table sees it, fed by the test: what was retired, nothing sent."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[GossipEvent](16)
        self.retired: list[str] = []

    def publish(self, message: BaseModel) -> str:
        return "own"

    def retire(self, envelope_id: str) -> None:
        self.retired.append(envelope_id)

    def subscribe(
        self, buffer: int = 16, kinds: object = None
    ) -> trio.MemoryReceiveChannel[GossipEvent]:
        return self.receive


async def test_a_heartbeat_caught_up_long_after_it_was_sent_counts_as_down(nursery) -> None:
    gossip = LocalGossip()
    me, other = "11" * 32, "22" * 32
    beat = heartbeat(me, time.time())
    table = Workers(me, gossip, lambda: beat)
    await nursery.start(table.run)
    for envelope_id, sent_at in (("new", time.time()), ("old", time.time() - 600)):
        payload = heartbeat(other, sent_at).model_dump(mode="json")
        await gossip.send.send(Received(Heartbeat.KIND, payload, other, envelope_id))

    async def both_handled() -> bool:
        return gossip.retired == ["old"]  # the late, older one is dropped, the newer one kept

    await eventually(both_handled)
    assert {w.node_id: w.state for w in table.workers()} == {me: "ready", other: "ready"}

    stale = heartbeat("33" * 32, time.time() - 600)  # a node long gone, caught up by a late joiner
    await gossip.send.send(
        Received(Heartbeat.KIND, stale.model_dump(mode="json"), stale.node_id, "x")
    )

    async def stale_listed() -> bool:
        return stale.node_id in {w.node_id for w in table.workers()}

    await eventually(stale_listed)
    assert {w.node_id: w.state for w in table.workers()}[stale.node_id] == "down"


def heartbeat(
    node_id: str,
    sent_at: float,
    kind: ExecutorKind = "wasi",
    slots: int = 1,
    free: int | None = None,
    labels: dict[str, str] | None = None,
) -> Heartbeat:
    return Heartbeat(
        node_id=node_id,
        sent_at=sent_at,
        executors=[ExecutorOffer(kind=kind, answers=True)],
        slots_total=slots,
        slots_free=slots if free is None else free,
        labels=labels or {},
        running=[],
        version="0.1.0",
        uptime_s=1.0,
    )


@pytest.mark.slow
def test_workers_command_against_node_processes(tmp_path: Path) -> None:
    """An origin and three worker processes: every member lists all four with their slots and
    labels; a worker killed with SIGKILL turns `down` everywhere."""
    a = NodeProcess(tmp_path / "a", "--max-jobs", "0")
    nodes = [a]
    try:
        for index, slots in enumerate((1, 2, 3)):
            nodes.append(
                NodeProcess(
                    tmp_path / f"w{index}",
                    "--join",
                    a.ticket,
                    "--max-jobs",
                    str(slots),
                    "--label",
                    f"rack=r{index}",
                )
            )

        def listed(node: NodeProcess) -> dict[str, Any]:
            return {w["node_id"]: w for w in json.loads(node.cli("workers", "--json").stdout)}

        wait_for(lambda: len(listed(a)) == 4 and len(listed(nodes[3])) == 4, "four in `workers`")
        seen = listed(a)
        for index, worker in enumerate(nodes[1:]):
            view = seen[worker.id]
            assert (view["state"], view["slots_total"], view["slots_free"]) == (
                "ready",
                index + 1,
                index + 1,
            )
            assert view["labels"] == {"rack": f"r{index}"}
        assert seen[a.id]["slots_total"] == 0
        lines = {line.split()[0]: line for line in a.cli("workers").stdout.splitlines()}
        assert lines[nodes[2].id].startswith(f"{nodes[2].id}  ready     slots 0/2"), lines
        assert " wasi," in lines[nodes[2].id] and f"v{__version__}" in lines[nodes[2].id]
        assert "rack=r1" in lines[nodes[2].id]

        nodes[1].kill()
        wait_for(
            lambda: listed(a)[nodes[1].id]["state"] == "down",
            "the killed worker `down`",
            timeout=DOWN_AFTER_S * 4,
        )
        wait_for(lambda: listed(nodes[3])[nodes[1].id]["state"] == "down", "down on a worker too")
        assert listed(a)[nodes[2].id]["state"] == "ready"
    finally:
        for node in nodes:
            node.kill()
