"""File contents through the API: streamed uploads and downloads, path-based add/export only where
the node's own user may reach, never a FIFO or the data folder; abandoned uploads leave nothing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import blake3
import httpx
import pytest
import trio
import wasmtime

from p2pnode.api import app as app_mod
from tests.conftest import cli_argv
from tests.nodeproc import NodeProcess, run_cli

MB = 1_000_000
CLI_TIMEOUT_S = 60


async def cli(node, *args: str) -> trio.Process:
    """The real CLI against the in-process node (run_process, so the node keeps answering)."""
    with trio.fail_after(CLI_TIMEOUT_S):
        return await trio.run_process(
            [*cli_argv(node), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_a_blob_is_never_rendered_by_a_browser(api) -> None:
    """A member's blob may be HTML: on the node's own origin, with the dashboard session, it
    would run as the dashboard; so a download is only ever a download."""
    page = b"<script>fetch('/ui/jobs')</script>"
    added = (
        await api.put("/blobs", content=page, headers={"Content-Type": "application/octet-stream"})
    ).json()
    got = await api.get(f"/blobs/{added['blob']['hash']}")
    assert got.content == page
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-disposition"] == "attachment"
    assert "sandbox" in got.headers["content-security-policy"]


async def test_upload_and_download_stream_through_the_api(api) -> None:
    data = os.urandom(3 * MB + 17)
    added = (
        await api.put(
            "/blobs",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
            params={"pin": False},
        )
    ).json()
    assert (
        added["blob"]["hash"] == blake3.blake3(data).hexdigest()
        and added["blob"]["pinned"] is False
    )
    got = await api.get(f"/blobs/{added['blob']['hash']}")
    assert got.content == data and got.headers["content-length"] == str(len(data))
    assert (await api.get(f"/blobs/{'0' * 64}")).status_code == 404


async def test_blob_add_of_a_fifo_is_a_clear_error(node, api, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = await cli(node, "blob", "add", str(fifo))
    assert result.returncode == 2
    assert result.stderr.decode().strip() == f"error: {fifo} is not a regular file"
    with trio.fail_after(10):  # the node's own path-based add neither hangs on it
        refused = await api.post("/blobs", json={"path": str(fifo)})
    assert (
        refused.status_code == 400 and refused.json()["detail"] == f"{fifo} is not a regular file"
    )
    assert (await api.post("/blobs", json={"path": "/dev/zero"})).status_code == 400


async def test_path_based_add_and_export_refuse_the_data_folder(node, api, tmp_path: Path) -> None:
    data = node.settings.data_dir
    for secret in (data / "secret.key", data / "api-token", data / "cluster.json"):
        refused = await api.post("/blobs", json={"path": str(secret)})
        assert refused.status_code == 403 and "data folder" in refused.json()["detail"], secret
    link = tmp_path / "innocent"
    link.symlink_to(data / "api-token")
    assert (await api.post("/blobs", json={"path": str(link)})).status_code == 403
    (tmp_path / "f.txt").write_text("fine")
    added = (await api.post("/blobs", json={"path": str(tmp_path / "f.txt")})).json()
    blob_hash = added["blob"]["hash"]
    for dest in (data / "node.json", data / "new-file", node.settings.blobs_dir / "data" / "x"):
        refused = await api.post(
            f"/blobs/{blob_hash}/export", json={"path": str(dest), "force": True}
        )
        assert refused.status_code == 403, dest
    assert (data / "node.json").read_text() != "fine" and not (data / "new-file").exists()


async def test_export_over_an_existing_file_needs_force(node, api, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("new content")
    added = (await api.post("/blobs", json={"path": str(tmp_path / "in.txt")})).json()
    existing = tmp_path / "existing.txt"
    existing.write_text("precious")
    refused = await api.post(f"/blobs/{added['blob']['hash']}/export", json={"path": str(existing)})
    assert refused.status_code == 409 and "force" in refused.json()["detail"]
    assert existing.read_text() == "precious"
    assert (
        await api.post(
            f"/blobs/{added['blob']['hash']}/export", json={"path": str(existing), "force": True}
        )
    ).status_code == 200
    assert existing.read_text() == "new content"

    # The CLI downloads through the stream, with the same rule.
    (tmp_path / "mine.txt").write_text("mine")
    result = await cli(node, "blob", "get", added["ticket"], "-o", str(tmp_path / "mine.txt"))
    assert result.returncode == 2 and "exists (pass --force" in result.stderr.decode()
    assert (tmp_path / "mine.txt").read_text() == "mine"
    result = await cli(
        node, "blob", "get", added["ticket"], "-o", str(tmp_path / "mine.txt"), "--force"
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mine.txt").read_text() == "new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "existing.txt",
        "in.txt",
        "mine.txt",
        "node1",
    ]  # no temp files left


async def test_abandoned_upload_leaves_nothing_behind(node, api, caplog) -> None:
    caplog.set_level(logging.INFO)
    tmp = node.settings.blobs_dir / "tmp"
    host, port = node.api_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    head = (
        f"PUT /blobs HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {node.api_token}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {50 * MB}\r\n\r\n"
    )
    await stream.send_all(head.encode() + os.urandom(4 << 20))
    with trio.fail_after(20):
        while not any(tmp.iterdir()):  # the upload is being written
            await trio.sleep(0.01)
    await stream.aclose()
    with trio.fail_after(20):
        while any(tmp.iterdir()):
            await trio.sleep(0.01)
    assert (await api.get("/blobs")).json() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_100_mb_add_is_streamed_not_buffered(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node")
    try:
        big = tmp_path / "big.bin"
        with open(big, "wb") as f:
            for _ in range(100):
                f.write(os.urandom(MB))
        before = peak_rss(node.proc.pid)
        with open(big, "rb") as f:  # an upload: the CLI's `blob add` has the node read the file
            out = httpx.put(
                f"{node.api}/blobs",
                content=iter(lambda: f.read(MB), b""),
                headers={**node.headers, "Content-Type": "application/octet-stream"},
                timeout=CLI_TIMEOUT_S,
            ).text
        after = peak_rss(node.proc.pid)
        with open(big, "rb") as f:
            assert blake3.blake3(f.read()).hexdigest() in out
        assert after - before < 30 * MB, (
            f"node peak RSS grew by {(after - before) / MB:.0f} MB for a 100 MB upload"
        )
        big.write_bytes(os.urandom(100 * MB))  # the node reads it: copied in the kernel
        out = node.cli("blob", "add", str(big)).stdout
        with open(big, "rb") as f:
            assert blake3.blake3(f.read()).hexdigest() in out
        grown = peak_rss(node.proc.pid) - after
        assert grown < 30 * MB, f"node peak RSS grew by {grown / MB:.0f} MB for a 100 MB path add"
    finally:
        node.kill()


def test_output_names_stay_inside_the_output_folder(tmp_path: Path) -> None:
    from p2pnode.cli import UserError
    from p2pnode.cli.job_cmds import output_path

    assert output_path(tmp_path, "sub/x y.txt") == tmp_path / "sub" / "x y.txt"
    assert output_path(tmp_path, "count.txt") == tmp_path / "count.txt"
    for bad in ("../x", "sub/../../x", "/etc/passwd", "", ".", "a\\..\\b"):
        with pytest.raises(UserError, match="would leave the output folder"):
            output_path(tmp_path, bad)


def test_cli_token_errors_are_one_line(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node")
    try:
        missing = run_cli(
            "--api", node.api, "--data", str(tmp_path / "elsewhere"), "status", check=False
        )
        assert missing.returncode == 1
        assert missing.stderr.strip().startswith(
            f"error: no API token: {tmp_path / 'elsewhere' / 'api-token'} does not exist"
        )
        wrong = run_cli("--api", node.api, "--api-token", "not-the-token", "status", check=False)
        assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1
        assert wrong.stderr.startswith("error: the node refused the API token")
        by_env = run_cli(
            "--api",
            node.api,
            "--data",
            str(tmp_path / "elsewhere"),
            "status",
            check=False,
            env={"P2PNODE_API_TOKEN": (tmp_path / "node" / "api-token").read_text().strip()},
        )
        assert by_env.returncode == 0, by_env.stderr
    finally:
        node.kill()


async def test_abandoned_fetch_stops(node, api, nursery) -> None:
    """A client that leaves a fetch stops it (a fetch from a provider that never answers would
    otherwise hold on)."""
    import tickets
    from p2pnode.blobs.protocol import BLOBS_ALPN
    from p2pnode.net.addr import PeerAddr
    from tests.conftest import accept_connection, bind_loopback

    stalled = await bind_loopback([BLOBS_ALPN])
    connected = trio.Event()

    async def accept_and_stall() -> None:
        held = await accept_connection(stalled)  # noqa: F841  (kept open, never answered)
        connected.set()
        await trio.sleep_forever()

    nursery.start_soon(accept_and_stall)
    blob_hash = os.urandom(32)
    ticket = tickets.encode(
        tickets.BlobTicket(
            provider=PeerAddr.from_endpoint(stalled.addr(), None).to_ticket(),
            hash=blob_hash,
            size=10,
            root=os.urandom(32),
        )
    )
    try:
        async with api.stream("POST", "/blobs/fetch", json={"ticket": ticket}) as response:
            assert response.status_code == 200
            with trio.fail_after(20):
                await connected.wait()
            assert node.blobs.store.is_in_use(blob_hash.hex())
        await api.aclose()
        with trio.fail_after(10):
            while node.blobs.store.is_in_use(blob_hash.hex()):
                await trio.sleep(0.01)
    finally:
        await stalled.close()


async def test_jobs_take_uploaded_blobs_not_paths(node, api, tmp_path: Path) -> None:
    secret = node.settings.data_dir / "cluster.json"
    for body in (
        {"module": str(secret)},
        {"module_blob": "ab" * 32, "artifacts": {"x": str(secret)}},
    ):
        refused = await api.post("/jobs", json=body)
        assert refused.status_code == 422 and "module_blob" in refused.json()["detail"], body
    missing = await api.post("/jobs", json={"module_blob": "ab" * 32})
    assert missing.status_code == 400 and "upload it first" in missing.json()["detail"], (
        missing.text
    )
    module = bytes(wasmtime.wat2wasm('(module (func (export "_start")))'))
    wasm = (
        await api.put(
            "/blobs", content=module, headers={"Content-Type": "application/octet-stream"}
        )
    ).json()
    job = await api.post(
        "/jobs",
        json={"module_blob": wasm["blob"]["hash"], "artifact_blobs": {"a": wasm["blob"]["hash"]}},
    )
    assert job.status_code == 200, job.text
    assert job.json()["spec"]["module"]["hash"] == wasm["blob"]["hash"]
    assert job.json()["spec"]["artifacts"]["a"]["providers"] == [node.id]


async def test_abandoned_download_releases_the_blob(node, api) -> None:
    async def chunks():
        for _ in range(64):
            yield os.urandom(1 << 20)

    added = (
        await api.put(
            "/blobs", content=chunks(), headers={"Content-Type": "application/octet-stream"}
        )
    ).json()
    blob_hash = added["blob"]["hash"]
    async with api.stream("GET", f"/blobs/{blob_hash}") as response:
        assert response.headers["content-length"] == str(64 << 20)
        async for _ in response.aiter_raw(1 << 16):
            break
        assert node.blobs.store.is_in_use(blob_hash)
    await api.aclose()
    with trio.fail_after(10):
        while node.blobs.store.is_in_use(blob_hash):
            await trio.sleep(0.01)
    assert (await httpx.AsyncClient(base_url=node.api_url).get("/health")).status_code == 200


def identity(path: Path) -> dict[str, int]:
    """The `expect` of a path add: what the caller's fstat says of its open file."""
    seen = os.stat(path)
    return {
        "dev": seen.st_dev,
        "ino": seen.st_ino,
        "size": seen.st_size,
        "mtime_ns": seen.st_mtime_ns,
    }


async def test_path_add_with_expect_takes_only_that_very_file(node, api, tmp_path: Path) -> None:
    """`expect` (what the CLI saw on its open file): the node adds the path only if it opens
    that same file, and answers 412 otherwise, which the CLI takes as "upload it instead"."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    expect = identity(path)
    added = await api.post("/blobs", json={"path": str(path), "expect": expect, "pin": False})
    assert added.status_code == 200, added.text
    first = added.json()["blob"]["hash"]
    assert first == blake3.blake3(b"one").hexdigest()
    # Unpinned, as a job's files go: GC spares it until the job holds it.
    assert (await api.post("/blobs/gc")).json()["removed"] == []

    (tmp_path / "new.bin").write_bytes(b"two")
    os.replace(tmp_path / "new.bin", path)  # the same path, another file
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for other in (path, tmp_path / "missing.bin", fifo):
        refused = await api.post("/blobs", json={"path": str(other), "expect": expect})
        assert refused.status_code == 412, (other, refused.text)
    assert (
        await api.post("/blobs", json={"path": str(tmp_path / "missing.bin")})
    ).status_code == 400
    assert [b["hash"] for b in (await api.get("/blobs")).json()] == [first]


async def test_path_add_with_expect_where_the_path_is_private_here(
    node, api, tmp_path: Path
) -> None:
    """A caller in another container names its file by a path that, where the node runs, lies
    in the node's data folder: not the caller's file there, so 412 and the caller uploads it.
    The node's own file, expected as the caller sees it (the same file), is still refused."""
    token = node.settings.data_dir / "api-token"
    (tmp_path / "f.bin").write_bytes(b"the caller's")
    elsewhere = await api.post(
        "/blobs", json={"path": str(token), "expect": identity(tmp_path / "f.bin")}
    )
    assert elsewhere.status_code == 412, elsewhere.text
    own = await api.post("/blobs", json={"path": str(token), "expect": identity(token)})
    assert own.status_code == 403 and "data folder" in own.json()["detail"]
    assert (await api.get("/blobs")).json() == []


@pytest.mark.parametrize("in_place", [False, True])
async def test_path_add_reads_the_file_it_checked(
    node, api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_place: bool
) -> None:
    """The path swapped for another file right after the node checked `expect` on the file it
    opened: a copy is of the checked file (read through that descriptor); an add in place,
    whose record names the file by its path, is refused rather than hash the other file."""
    path, other = tmp_path / "f.bin", tmp_path / "other.bin"
    path.write_bytes(b"checked")
    other.write_bytes(b"swapped in")
    expect = identity(path)
    check_private = app_mod._outside_private_dirs

    def swap_then_check(on: object, real: Path) -> Path:
        os.replace(other, path)
        return check_private(on, real)

    monkeypatch.setattr(app_mod, "_outside_private_dirs", swap_then_check)
    body = {"path": str(path), "expect": expect, "in_place": in_place}
    added = await api.post("/blobs", json=body)
    listed = [b["hash"] for b in (await api.get("/blobs")).json()]
    if in_place:
        assert added.status_code == 400, added.text
        assert "changed while it was being added" in added.json()["detail"]
        assert listed == []
    else:
        assert added.status_code == 200, added.text
        assert listed == [added.json()["blob"]["hash"]] == [blake3.blake3(b"checked").hexdigest()]


@pytest.mark.parametrize("in_place", [False, True])
async def test_path_add_checks_where_the_opened_file_is(
    node, api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_place: bool
) -> None:
    """A folder on the path swapped for a symlink to the data folder between resolving the path
    and opening it: the node must not check one file and read another (here the API token)."""
    folder = tmp_path / "folder"
    folder.mkdir()
    path = folder / "api-token"
    path.write_text("decoy")
    realpath = os.path.realpath

    def resolve_then_swap(p: str | os.PathLike[str], **kwargs: bool) -> str:
        real = realpath(p, **kwargs)
        if Path(p) == path and not (tmp_path / "aside").exists():
            folder.rename(tmp_path / "aside")
            folder.symlink_to(node.settings.data_dir)
        return real

    monkeypatch.setattr(os.path, "realpath", resolve_then_swap)
    refused = await api.post("/blobs", json={"path": str(path), "in_place": in_place})
    assert refused.status_code == 400 and "replaced" in refused.json()["detail"], refused.text
    assert (await api.get("/blobs")).json() == []
