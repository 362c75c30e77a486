"""The Flawless client and executor against a real HTTP fake of the documented Flawless API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from p2pnode.executors.base import ExecutionLimits, ExecutionRequest, Executor, JobMaxima
from p2pnode.executors.flawless import (
    FlawlessClient,
    FlawlessError,
    FlawlessExecutor,
    FlawlessUnavailable,
)
from tests.fake_flawless import (
    VERSION,
    FakeFlawlessState,
    Misbehaviour,
    RawResponse,
    reserved_socket,
    serve_fake_flawless,
)
from tests.fake_flawless import fake_flawless as fake_flawless  # fixture

Served = tuple[str, FakeFlawlessState]
MODULE = b"\0asm\x01\0\0\0fake flawless module"


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback URL where nothing listens (the port stays reserved during the test)."""
    with reserved_socket() as sock:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _request(tmp_path: Path, workflow: str | None = "echo", input: Any = None, **limits: Any):
    module = tmp_path / "module.wasm"
    module.write_bytes(MODULE)
    return ExecutionRequest(
        module_path=module,
        module_hash="ab" * 32,
        workflow=workflow,
        input=input,
        artifacts_dir=tmp_path / "in",
        output_dir=tmp_path / "out",
        scratch_dir=tmp_path / "scratch",
        limits=ExecutionLimits(**limits),
    )


async def test_executor_protocol_and_availability(fake_flawless: Served, dead_url: str) -> None:
    url, _ = fake_flawless
    async with FlawlessClient(url) as client:
        executor = FlawlessExecutor(client)
        assert isinstance(executor, Executor)
        assert executor.kind == "flawless"
        assert await executor.available()
    async with FlawlessClient(dead_url) as nobody:
        assert not await FlawlessExecutor(nobody).available()


async def test_deploy_is_multipart_and_cached(fake_flawless: Served, tmp_path: Path) -> None:
    url, state = fake_flawless
    async with FlawlessClient(url) as client:
        executor = FlawlessExecutor(client)
        first = await executor.run(_request(tmp_path, input={"n": 1}))
        second = await executor.run(_request(tmp_path, input={"n": 2}))
    assert first.ok and first.result == {"n": 1}
    assert second.ok and second.result == {"n": 2}
    [deploy] = state.requests_to("deploy")
    [part] = deploy.parts
    assert (part.name, part.content_type, part.data) == ("module", "application/wasm", MODULE)
    assert deploy.headers["content-type"].startswith("multipart/form-data")
    assert len(state.requests_to("start")) == 2


async def test_start_sends_input_as_json_string(fake_flawless: Served) -> None:
    url, state = fake_flawless
    async with FlawlessClient(url) as client:
        module = await client.deploy("cd" * 32, MODULE)
        started = await client.start(module, "echo", {"words": ["a", "b"], "n": None})
    assert started.id.startswith("wkf_")
    assert started.response is not None
    assert json.loads(started.response) == {"words": ["a", "b"], "n": None}
    body = state.requests_to("start")[0].json_body()
    assert body == {
        "module": module.name,
        "version": module.version,
        "workflow": "echo",
        "input": json.dumps({"words": ["a", "b"], "n": None}),
    }


async def test_null_response_is_a_result_of_none(fake_flawless: Served, tmp_path: Path) -> None:
    url, _ = fake_flawless
    async with FlawlessClient(url) as client:
        result = await FlawlessExecutor(client).run(_request(tmp_path, workflow="silent", input=5))
    assert result.ok and result.result is None
    assert result.logs.startswith("flawless workflow wkf_")


async def test_send_msg(fake_flawless: Served) -> None:
    url, state = fake_flawless
    async with FlawlessClient(url) as client:
        module = await client.deploy("ef" * 32, MODULE)
        started = await client.start(module, "silent", None)
        await client.send_msg(started.id, "poke", {"times": 3})
        with pytest.raises(FlawlessError, match="not found"):
            await client.send_msg("wkf_nope", "poke", 1)
    assert state.messages == [(started.id, "poke", json.dumps({"times": 3}))]
    assert state.requests_to("send_msg")[0].path == f"/api/workflow/send-msg/{started.id}"


async def test_bearer_token_on_every_call(tmp_path: Path) -> None:
    async with serve_fake_flawless(FakeFlawlessState(token="s3cret")) as (url, state):
        async with FlawlessClient(url, token="s3cret") as client:
            assert await client.wait_ready(5) == VERSION
            result = await FlawlessExecutor(client).run(_request(tmp_path, input=[1]))
            assert result.ok and result.result == [1]
            module = await client.deploy("ab" * 32, MODULE)
            await client.send_msg((await client.start(module, "silent", 0)).id, "t", 0)
        assert {r.headers.get("authorization") for r in state.requests} == {"Bearer s3cret"}
        assert {r.endpoint for r in state.requests} == {"version", "deploy", "start", "send_msg"}
        async with FlawlessClient(url, token="wrong") as intruder:
            refused = await FlawlessExecutor(intruder).run(_request(tmp_path))
        assert not refused.ok
        assert refused.error == "deploy: HTTP 401 from Flawless: unauthorized"


async def test_wait_ready_backs_off_until_server_starts() -> None:
    sock = reserved_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    attempts = 0
    refused_twice = trio.Event()

    async def count_attempt(_request: httpx.Request) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 3:  # two probes were refused before this one went out
            refused_twice.set()

    async def serve_when_probed(ready: trio.Event) -> None:
        await refused_twice.wait()
        async with serve_fake_flawless(sock=sock):
            await ready.wait()

    ready = trio.Event()
    async with httpx.AsyncClient(event_hooks={"request": [count_attempt]}) as http:
        client = FlawlessClient(url, http=http)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_when_probed, ready)
            assert await client.wait_ready(timeout=10) == VERSION
            ready.set()
    assert attempts >= 3


async def test_wait_ready_reports_absent_server(dead_url: str) -> None:
    async with FlawlessClient(dead_url) as client:
        with trio.fail_after(5):
            with pytest.raises(FlawlessUnavailable) as caught:
                await client.wait_ready(timeout=0.3)
    assert str(caught.value) == f"no Flawless server answering at {dead_url}: connection refused"


async def test_executor_reports_absent_server(tmp_path: Path, dead_url: str) -> None:
    async with FlawlessClient(dead_url) as client:
        result = await FlawlessExecutor(client).run(_request(tmp_path))
    assert not result.ok
    assert result.error == f"no Flawless server answering at {dead_url}: connection refused"


@pytest.mark.parametrize(
    ("endpoint", "misbehaviour", "reason"),
    [
        ("deploy", "error_body", "deploy: Flawless reported an error: fake deploy failure"),
        ("deploy", "http_500", "deploy: HTTP 500 from Flawless: internal server error"),
        ("deploy", "garbage", "deploy: Flawless answered non-JSON: '<html>definitely not json'"),
        ("deploy", "wrong_shape", 'deploy: unexpected answer from Flawless: {"ok":{"unexpected"'),
        ("start", "error_body", "start of workflow 'echo': Flawless reported an error: fake"),
        ("start", "http_500", "start of workflow 'echo': HTTP 500 from Flawless: internal"),
        ("start", "garbage", "start of workflow 'echo': Flawless answered non-JSON: '<html>"),
        ("start", "wrong_shape", "start of workflow 'echo': unexpected answer from Flawless"),
    ],
)
async def test_misbehaving_server_gives_clear_failure(
    fake_flawless: Served, tmp_path: Path, endpoint: Any, misbehaviour: Misbehaviour, reason: str
) -> None:
    url, state = fake_flawless
    state.misbehave[endpoint] = misbehaviour
    async with FlawlessClient(url) as client:
        result = await FlawlessExecutor(client).run(_request(tmp_path))
    assert not result.ok and result.result is None
    assert result.error is not None and result.error.startswith(reason)


async def test_failed_start_forgets_deployment(fake_flawless: Served, tmp_path: Path) -> None:
    url, state = fake_flawless
    async with FlawlessClient(url) as client:
        executor = FlawlessExecutor(client)
        state.misbehave["start"] = "error_body"
        assert not (await executor.run(_request(tmp_path))).ok
        del state.misbehave["start"]
        assert (await executor.run(_request(tmp_path, input=2))).result == 2
    assert len(state.requests_to("deploy")) == 2


async def test_unknown_workflow_and_missing_name(fake_flawless: Served, tmp_path: Path) -> None:
    url, _ = fake_flawless
    async with FlawlessClient(url) as client:
        executor = FlawlessExecutor(client)
        unknown = await executor.run(_request(tmp_path, workflow="nope"))
        unnamed = await executor.run(_request(tmp_path, workflow=None))
    assert (
        unknown.error
        == "start of workflow 'nope': Flawless reported an error: workflow nope not found"
    )
    assert unnamed.error == "a Flawless job must name its workflow"


async def test_hang_past_time_limit(fake_flawless: Served, tmp_path: Path) -> None:
    url, state = fake_flawless
    state.misbehave["start"] = "hang"
    async with FlawlessClient(url) as client:
        with trio.fail_after(5):
            result = await FlawlessExecutor(client).run(_request(tmp_path, time_s=0.3))
    assert not result.ok
    assert result.error == "timed out after 0.3 s waiting for Flawless"


async def test_node_maximum_caps_the_time_a_job_asks(fake_flawless: Served, tmp_path: Path) -> None:
    url, state = fake_flawless
    state.misbehave["start"] = "hang"
    async with FlawlessClient(url) as client:
        executor = FlawlessExecutor(client, maxima=JobMaxima(time_s=0.3, memory_bytes=1, fuel=1))
        with trio.fail_after(5):
            result = await executor.run(_request(tmp_path, time_s=1e6))
    assert result.error == "timed out after 0.3 s waiting for Flawless"
    # Memory and fuel are the server's to govern: only the time cap is noted.
    assert (
        result.logs == "[p2pnode] time limit of 1e+06 s lowered to this node's maximum of 0.3 s\n"
    )


async def test_non_json_workflow_response(fake_flawless: Served, tmp_path: Path) -> None:
    url, state = fake_flawless
    state.workflows["broken"] = lambda _input: RawResponse("not json")
    async with FlawlessClient(url) as client:
        result = await FlawlessExecutor(client).run(_request(tmp_path, workflow="broken"))
    assert result.error == "workflow response is not JSON: 'not json'"


async def test_missing_module_file(fake_flawless: Served, tmp_path: Path) -> None:
    url, _ = fake_flawless
    request = _request(tmp_path).model_copy(update={"module_path": tmp_path / "missing.wasm"})
    async with FlawlessClient(url) as client:
        result = await FlawlessExecutor(client).run(request)
    assert (
        result.error == f"cannot read module {tmp_path / 'missing.wasm'}: No such file or directory"
    )
