"""`GET /metrics`: Prometheus text that `prometheus_client`'s own parser reads, whose job and blob
counters move when a real job runs between two real nodes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from p2pnode.jobs.model import JobState
from p2pnode.jobs.service import JobSubmission
from tests.test_api_files import cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def scrape(node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's /metrics, by name and labels."""
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {node.api_token}"}, timeout=30
    ) as client:
        reply = await client.get(f"{node.api_url}/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_job_counters_move(start_node) -> None:
    origin = await start_node(max_jobs=0)
    worker = await start_node(join=origin.join_ticket())
    before_origin, before_worker = await scrape(origin), await scrape(worker)
    assert value(before_origin, "p2pnode_jobs", state="succeeded") == 0
    assert value(before_worker, "p2pnode_job_attempts_total", result="succeeded") == 0
    assert value(before_origin, "p2pnode_disk_total_bytes") > 0
    members = [v for (name, _), v in before_origin.items() if name == "p2pnode_members"]
    assert sorted(members) == [0, 0, 1]  # the worker, connected or idle

    job = await origin.jobs.submit_files(
        JobSubmission(module=EXAMPLES / "echo.wat", input={"n": 1})
    )
    with trio.fail_after(60):
        done = await origin.jobs.wait(job.id)
    assert done is not None and done.state == JobState.SUCCEEDED, done

    after_origin, after_worker = await scrape(origin), await scrape(worker)
    assert value(after_origin, "p2pnode_jobs", state="succeeded") == 1
    assert value(after_origin, "p2pnode_jobs", state="pending") == 0
    assert value(after_origin, "p2pnode_blob_served_bytes_total") >= done.spec.module.size
    assert value(after_origin, "p2pnode_blob_store_blobs") >= 1
    assert value(after_worker, "p2pnode_job_claims_total", result="granted") == 1
    assert value(after_worker, "p2pnode_job_attempts_total", result="succeeded") == 1
    assert value(after_worker, "p2pnode_job_run_duration_seconds_count") == 1
    assert value(after_worker, "p2pnode_blob_fetched_bytes_total") == done.spec.module.size
    assert value(after_worker, "p2pnode_blob_fetches_total", result="fetched") == 1
    assert value(after_worker, "p2pnode_gossip_envelopes_received_total") > value(
        before_worker, "p2pnode_gossip_envelopes_received_total"
    )
    heartbeat = [k for k in after_worker if k[0] == "p2pnode_worker_heartbeat_age_seconds"]
    assert {dict(labels)["worker"] for _, labels in heartbeat} == {origin.id, worker.id}


async def test_metrics_need_the_token(node) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.get(f"{node.api_url}/metrics")
    assert reply.status_code == 401


async def test_status_shows_the_store_size_and_free_disk(node, tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    await node.blobs.add(tmp_path / "a.bin")
    shown = await cli(node, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    disk = json.loads(shown.stdout)["disk"]
    usage = shutil.disk_usage(node.blobs.store.root)
    assert (disk["store_blobs"], disk["store_bytes"], disk["total_bytes"]) == (1, 1000, usage.total)
    assert 0 < disk["free_bytes"] <= usage.total
    plain = (await cli(node, "status")).stdout.decode()
    assert "store     1 blobs, 0.0 MB; disk " in plain and " GB free of " in plain
    samples = await scrape(node)
    assert value(samples, "p2pnode_blob_store_bytes") == 1000
    assert value(samples, "p2pnode_disk_total_bytes") == usage.total
