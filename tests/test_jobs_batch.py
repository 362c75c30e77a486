"""Many jobs in one request: `POST /jobs/batch` and `p2pnode job submit --inputs`. All or none,
in order, one transaction, several jobs to an announcement; a bad entry is named by its index
(or its line)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import trio

from p2pnode.api import job_routes
from p2pnode.executors.wasm import load_module_bytes
from p2pnode.jobs import model, service
from p2pnode.jobs.announcements import MAX_ANNOUNCED, JobsAnnounced
from tests.conftest import cli_argv

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def upload_echo(api) -> str:
    wasm = load_module_bytes(EXAMPLES / "echo.wat")
    reply = await api.put(
        "/blobs", content=wasm, headers={"Content-Type": "application/octet-stream"}
    )
    return str(reply.json()["blob"]["hash"])


def api_of(node) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=node.api_url, headers={"Authorization": f"Bearer {node.api_token}"}, timeout=30
    )


async def test_a_batch_runs_every_job_in_order_stored_at_once(start_node, monkeypatch) -> None:
    origin = await start_node(max_jobs=0)
    await start_node(join=origin.join_ticket())
    stored: list[int] = []
    submit_many = origin.jobs.store.submit_many
    monkeypatch.setattr(
        origin.jobs.store,
        "submit_many",
        lambda who, specs: stored.append(len(specs)) or submit_many(who, specs),
    )
    published: list[object] = []
    publish = origin.jobs._gossip.publish
    monkeypatch.setattr(origin.jobs._gossip, "publish", lambda m: published.append(m) or publish(m))
    tagged: list[str] = []
    set_tag = origin.blobs.set_tag
    monkeypatch.setattr(
        origin.blobs, "set_tag", lambda tag, h: tagged.append(tag) or set_tag(tag, h)
    )
    async with api_of(origin) as api:
        module = await upload_echo(api)
        reply = await api.post(
            "/jobs/batch", json=[{"module_blob": module, "input": {"n": n}} for n in range(5)]
        )
        assert reply.status_code == 200, reply.text
        ids = reply.json()["ids"]
        assert stored == [5]  # one transaction for all five
        assert tagged == [model.job_tag(ids[0], "source")]  # the rest held at once (set_tags)
        held = {model.tag_job(t) for t, h in (await origin.blobs.tags()).items() if h == module}
        assert held == set(ids)
        assert [type(m).__name__ for m in published] == ["JobsAnnounced"]
        assert [job.id for job in published[0].jobs] == ids  # type: ignore[attr-defined]
        # Within the first re-announcement (30 s): the worker heard of them by the batch's own
        # announcement (~1 s here).
        waited = await api.post("/jobs/wait", json={"ids": ids, "timeout": 20})
        assert waited.status_code == 200, waited.text
        assert [j["state"] for j in waited.json()] == ["succeeded"] * 5  # one request for all
        assert [j["result"] for j in waited.json()] == [{"n": n} for n in range(5)]
        unknown = await api.post("/jobs/wait", json={"ids": [*ids, model.new_job_id()]})
        assert unknown.status_code == 404


async def test_a_wait_for_many_jobs_answers_at_its_timeout(start_node) -> None:
    node = await start_node(max_jobs=0)  # no worker: the jobs stay pending
    async with api_of(node) as api:
        module = await upload_echo(api)
        ids = (await api.post("/jobs/batch", json=[{"module_blob": module}] * 2)).json()["ids"]
        with trio.fail_after(10):
            waited = await api.post("/jobs/wait", json={"ids": ids, "timeout": 0.2})
        with trio.fail_after(30):  # an unknown id among pending ones: told at once
            unknown = await api.post(
                "/jobs/wait", json={"ids": [*ids, model.new_job_id()], "timeout": 600}
            )
    assert [j["state"] for j in waited.json()] == ["pending", "pending"]
    assert node.jobs.store.unfinished([*ids, model.new_job_id()]) == set(ids)
    assert unknown.status_code == 404, unknown.text


async def test_a_bad_entry_refuses_the_batch_by_its_index(node, api, monkeypatch) -> None:
    module = await upload_echo(api)
    good = {"module_blob": module, "input": 1}
    malformed = await api.post("/jobs/batch", json=[good, {"module_blob": "nothex"}])
    assert malformed.status_code == 422
    assert malformed.json()["detail"].startswith("invalid 1.module_blob:"), malformed.text
    unusable = await api.post("/jobs/batch", json=[good, good, {"module_blob": "ab" * 32}])
    assert unusable.status_code == 400
    assert unusable.json()["detail"].startswith("job 2: the module blob"), unusable.text
    big = {"module_blob": module, "input": "x" * model.MAX_INPUT_BYTES}
    too_large = await api.post("/jobs/batch", json=[good, big])
    assert too_large.status_code == 413
    assert too_large.json()["detail"].startswith("job 1: input of"), too_large.text
    paths = await api.post("/jobs/batch", json=[good, {"module": "/etc/passwd"}])
    assert paths.status_code == 422 and "job 1: upload the module" in paths.json()["detail"]
    assert node.jobs.store.list() == []  # all or none
    held = [t for t in await node.blobs.tags() if model.tag_job(t) is not None]
    assert held == []  # what the refused batches tagged is released
    monkeypatch.setattr(job_routes, "MAX_BATCH_JOBS", 3)
    over = await api.post("/jobs/batch", json=[good] * 4)
    assert over.status_code == 413
    assert over.json()["detail"] == "a batch holds at most 3 jobs, not 4"


async def test_an_announcement_names_many_jobs_and_retires_with_the_last(
    node, api, monkeypatch
) -> None:
    """No worker: the jobs stay pending. An envelope names up to `MAX_ANNOUNCED` jobs, and it
    retires once every job it names has ended, not before."""
    published: list[object] = []
    retired: list[str] = []
    gossip = node.jobs._gossip
    publish = gossip.publish
    monkeypatch.setattr(gossip, "publish", lambda m: published.append(m) or publish(m))
    retire = gossip.retire
    monkeypatch.setattr(gossip, "retire", lambda e: retired.append(e) or retire(e))
    module = await upload_echo(api)
    count = MAX_ANNOUNCED + 3
    reply = await api.post("/jobs/batch", json=[{"module_blob": module}] * count)
    ids = reply.json()["ids"]
    assert [len(m.jobs) for m in published if isinstance(m, JobsAnnounced)] == [
        MAX_ANNOUNCED,
        3,
    ]
    last = ids[MAX_ANNOUNCED:]
    for job_id in last[:-1]:
        await node.jobs.cancel(job_id)
    assert retired == []  # one of its jobs still waits
    await node.jobs.cancel(last[-1])
    assert len(retired) == 1


async def test_cli_submits_a_job_per_line(node, tmp_path: Path) -> None:
    inputs = tmp_path / "sweep.jsonl"
    inputs.write_text('{"n": 1}\n\n[2, 3]\n"four"\n')
    argv = [*cli_argv(node), "job", "submit", "--module", str(EXAMPLES / "echo.wat")]
    done = await trio.to_thread.run_sync(
        lambda: subprocess.run([*argv, "--inputs", str(inputs)], capture_output=True, text=True)
    )
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert [node.jobs.store.get(i).spec.input for i in ids] == [{"n": 1}, [2, 3], "four"]

    piped = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [*argv, "--inputs", "-"], input="5\n6\n", capture_output=True, text=True
        )
    )
    assert piped.returncode == 0, piped.stderr
    assert [node.jobs.store.get(i).spec.input for i in piped.stdout.split()] == [5, 6]

    inputs.write_text('{"n": 1}\n{"n": 2\n')
    bad = await trio.to_thread.run_sync(
        lambda: subprocess.run([*argv, "--inputs", str(inputs)], capture_output=True, text=True)
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"error: --inputs {inputs} line 2 is not JSON"), bad.stderr
    assert len(bad.stderr.splitlines()) == 1
    assert len(node.jobs.store.list()) == 5  # nothing of the bad file was submitted


async def test_pending_jobs_are_announced_again_several_to_an_envelope(
    start_node, monkeypatch
) -> None:
    """The re-announcement of jobs nobody took (and a restart's) groups them as a batch does:
    one envelope each was 10,000 signatures after restarting with a sweep pending."""
    monkeypatch.setattr(service, "SWEEP_INTERVAL_S", 0.01)
    monkeypatch.setattr(service, "REANNOUNCE_EVERY", 1)
    node = await start_node(max_jobs=0)  # no worker: the jobs stay pending
    published: list[object] = []
    publish = node.jobs._gossip.publish
    monkeypatch.setattr(node.jobs._gossip, "publish", lambda m: published.append(m) or publish(m))
    async with api_of(node) as api:
        module = await upload_echo(api)
        ids = (await api.post("/jobs/batch", json=[{"module_blob": module}] * 5)).json()["ids"]
    with trio.fail_after(30):
        while len(published) < 2:
            await trio.sleep(0.01)
    again = published[1]
    assert isinstance(again, JobsAnnounced), again
    assert sorted(job.id for job in again.jobs) == sorted(ids)


async def test_cli_splits_a_sweep_of_large_inputs_under_the_body_limit(
    node, tmp_path: Path
) -> None:
    """Twelve inputs of 1.5 MiB are more than one request body may hold (17 MiB): sent as one
    batch they were refused (413) after nothing, or, later in a sweep, after earlier batches."""
    inputs = tmp_path / "large.jsonl"
    inputs.write_text("".join(json.dumps(f"{n:02d}" + "x" * (3 << 19)) + "\n" for n in range(12)))
    argv = [*cli_argv(node), "job", "submit", "--module", str(EXAMPLES / "echo.wat")]
    done = await trio.to_thread.run_sync(
        lambda: subprocess.run([*argv, "--inputs", str(inputs)], capture_output=True, text=True)
    )
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 12
    assert node.jobs.store.get(ids[-1]).spec.input_blob is not None  # large: held as a blob
