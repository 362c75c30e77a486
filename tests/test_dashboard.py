"""The dashboard against a real node's API: its shells and fragments, what they show, that what
members send is escaped, and its access rules (login code or token, the session header, Host and
Origin)."""

from __future__ import annotations

import contextlib
import hashlib
import html
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import httpx
import pytest
import trio

from p2pnode.api.auth import (
    DOWNLOAD_TTL_S,
    LOGIN_CODE_TTL_S,
    SESSION_TTL_S,
    Sessions,
    session_cookie,
)
from p2pnode.jobs.model import JobState
from p2pnode.jobs.service import JobSubmission
from tests.conftest import cli_argv

pytestmark = pytest.mark.trio

COMMAND = Path(__file__).resolve().parent.parent / "examples" / "command.wat"
SCRIPT = "<script>alert(1)</script>"
SESSION_HEADER = "X-P2pnode-Session"
JOB_ID = "job_00000000000000000000000000"
FRAGMENTS = ("/ui/node", "/ui/cluster", "/ui/blobs", "/ui/jobs", f"/ui/jobs/{JOB_ID}/live")


def anonymous(node) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.api_url, timeout=30)


async def log_in(client: httpx.AsyncClient, **credential: str) -> str:
    """What the login page's script does: trade a code or the token for the session secret."""
    answer = await client.post("/login", json=credential)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    secret: str = answer.json()["session"]
    return secret


@contextlib.asynccontextmanager
async def logged_in(node, api) -> AsyncIterator[httpx.AsyncClient]:
    """A client like the dashboard's script: the session secret from a one-time code, sent as the
    header on every request."""
    code = (await api.post("/login-codes")).json()["code"]
    async with anonymous(node) as client:
        client.headers[SESSION_HEADER] = await log_in(client, code=code)
        yield client


async def test_pages_are_data_free_shells_and_fragments_need_the_session(node) -> None:
    async with anonymous(node) as browser:
        for path in ("/", f"/ui/jobs/{JOB_ID}"):
            shell = await browser.get(path)
            assert shell.status_code == 200, path
            assert node.id not in shell.text and node.join_ticket()[:40] not in shell.text
            assert "default-src 'self'" in shell.headers["content-security-policy"]
            assert shell.headers["x-frame-options"] == "DENY"
            assert shell.headers["cache-control"] == "no-store"
            assert '<script src="/static/dashboard.js?v=' in shell.text
        assert 'hx-get="/ui/jobs" hx-trigger="load, every 1s"' in (await browser.get("/")).text
        job_shell = (await browser.get(f"/ui/jobs/{JOB_ID}")).text
        assert f'hx-get="/ui/jobs/{JOB_ID}/live" hx-trigger="load"' in job_shell
        # A shell shows what its URL says, nothing else: a malformed id is not echoed.
        assert (await browser.get("/ui/jobs/<b>x")).status_code == 422
        for path in FRAGMENTS:
            refused = await browser.get(path, headers={"HX-Request": "true"})
            assert refused.status_code == 401, path
        login = await browser.get("/login")
        assert login.status_code == 200 and 'name="token"' in login.text
        assert "data-logout" not in login.text
        # The JSON API keeps answering 401 to a client without credentials.
        assert (await browser.get("/jobs")).status_code == 401
        assert (await browser.post("/login-codes")).status_code == 401


async def test_a_page_from_before_the_upgrade_is_sent_to_log_in(node) -> None:
    """A tab opened before sessions moved to a header polls with htmx and the old cookie: htmx
    follows HX-Redirect (even on a 401) to the login page, instead of freezing on stale data.
    Today's script, which sends the header, handles a 401 itself (it forgets the secret)."""
    async with anonymous(node) as old_tab:
        port = httpx.URL(node.api_url).port
        old_tab.cookies.set(session_cookie(port), "a session of the previous version")
        polled = await old_tab.get("/ui/jobs", headers={"HX-Request": "true"})
        assert polled.status_code == 401 and polled.headers["hx-redirect"] == "/login"
        stale = await old_tab.get(
            "/ui/jobs", headers={"HX-Request": "true", SESSION_HEADER: "expired"}
        )
        assert stale.status_code == 401 and "hx-redirect" not in stale.headers


async def test_static_assets_are_served_from_the_package(node) -> None:
    async with anonymous(node) as browser:
        htmx = await browser.get("/static/htmx.min.js")
        assert htmx.status_code == 200 and htmx.headers["content-type"].startswith(
            "text/javascript"
        )
        assert htmx.text.startswith("/*! htmx 2.") and "Zero-Clause BSD" in htmx.text[:300]
        assert (await browser.get("/static/dashboard.css")).status_code == 200
        script = await browser.get("/static/dashboard.js")
        assert script.status_code == 200 and "localStorage" in script.text
        # Pages name each asset by its content: a script cached from another version never runs.
        shell = (await browser.get("/login")).text
        digest = hashlib.sha256(script.content).hexdigest()[:16]
        assert f'<script src="/static/dashboard.js?v={digest}">' in shell
        assert (await browser.get(f"/static/dashboard.js?v={digest}")).text == script.text
        assert (await browser.get("/static/htmx.LICENSE")).status_code == 404
        assert (await browser.get("/static/..%2fdashboard.py")).status_code == 404


async def test_one_time_code_logs_in_once_and_answers_the_secret_to_the_script(node, api) -> None:
    code = (await api.post("/login-codes")).json()
    assert code["expires_in"] == LOGIN_CODE_TTL_S
    async with anonymous(node) as browser:
        wrong = await browser.post("/login", json={"code": code["code"][:-1] + "x"})
        assert wrong.status_code == 400 and "used already or has expired" in wrong.text
        answer = await browser.post("/login", json={"code": code["code"]})
        assert answer.status_code == 200 and answer.json()["expires_in"] == SESSION_TTL_S
        secret = answer.json()["session"]
        assert len(secret) >= 43
        # No cookie carries it: the only cookie the login sends deletes the old session cookie.
        port = httpx.URL(node.api_url).port
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f'{session_cookie(port)}=""') and secret not in cookie
        assert "max-age=0" in cookie.lower()
        fragment = await browser.get("/ui/node", headers={SESSION_HEADER: secret})
        assert fragment.status_code == 200 and node.id in fragment.text
        assert node.join_ticket() in fragment.text
        assert fragment.headers["cache-control"] == "no-store"
    async with anonymous(node) as other:
        again = await other.post("/login", json={"code": code["code"]})
        assert again.status_code == 400 and "set-cookie" not in again.headers


async def test_expired_code_and_closed_session_are_refused() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0])
    code = sessions.new_code()
    now[0] = LOGIN_CODE_TTL_S + 1
    assert sessions.redeem(code) is None
    session = sessions.open()
    assert sessions.get(session.secret) == session
    sessions.close(session.secret)
    assert sessions.get(session.secret) is None
    later = sessions.open()
    now[0] += 13 * 3600
    assert sessions.get(later.secret) is None


async def test_token_logs_in_and_a_wrong_token_does_not(node) -> None:
    async with anonymous(node) as browser:
        wrong = await browser.post("/login", json={"token": node.api_token[:-1] + "x"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong token"
        secret = await log_in(browser, token=node.api_token)
        assert (await browser.get("/ui/jobs", headers={SESSION_HEADER: secret})).status_code == 200
        # The request is small JSON with one credential; anything else is refused before use.
        assert (await browser.post("/login", json={"token": "x" * 5000})).status_code == 413
        form = await browser.post("/login", data={"token": node.api_token})
        assert form.status_code == 415
        for body in ({}, {"token": node.api_token, "code": "x"}, {"token": "x", "next": "/"}):
            assert (await browser.post("/login", json=body)).status_code == 422, body


async def test_cross_site_and_foreign_host_are_refused_with_a_session(node, api) -> None:
    async with logged_in(node, api) as browser:
        assert (await browser.get("/ui/node")).status_code == 200
        port = httpx.URL(node.api_url).port
        for headers in (
            {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
            {"Origin": f"http://127.0.0.1:{port + 1}", "Sec-Fetch-Site": "same-site"},
            {"Sec-Fetch-Site": "cross-site"},
        ):
            assert (await browser.get("/ui/node", headers=headers)).status_code == 403, headers
            cancel = await browser.post(f"/ui/jobs/{JOB_ID}/cancel", headers=headers)
            assert cancel.status_code == 403, headers
        rebinding = await browser.get("/ui/node", headers={"Host": f"evil.example:{port}"})
        assert rebinding.status_code == 421
    async with anonymous(node) as stranger:
        forged = await stranger.post(
            "/login", json={"token": node.api_token}, headers={"Origin": "http://evil.example"}
        )
        assert forged.status_code == 403 and "session" not in forged.text


async def test_session_reads_and_posts_only_the_dashboards_actions(node, api) -> None:
    """The header reads the API and posts the dashboard's buttons, nothing else; the token
    still does everything, the dashboard's fragments included."""
    blob = await node.blobs.store.add_bytes(b"kept", pin=True)
    async with logged_in(node, api) as browser:
        assert (await browser.get("/jobs")).status_code == 200
        assert (await browser.get(f"/blobs/{blob.hash}")).content == b"kept"
        for method, path in (
            ("POST", "/blobs/gc"),
            ("POST", "/tickets/join"),
            ("DELETE", f"/blobs/{blob.hash}"),
            ("POST", "/login-codes"),
        ):
            refused = await browser.request(method, path)
            assert refused.status_code == 403, path
            assert refused.json()["detail"].startswith("a dashboard session may only read")
        assert node.blobs.store.has(blob.hash)
        assert (await api.get("/ui/node")).status_code == 200
        assert (await api.post("/blobs/gc")).status_code == 200
        secret = browser.headers[SESSION_HEADER]
        out = await browser.post("/ui/logout")
        assert out.status_code == 204 and "max-age=0" in out.headers["set-cookie"].lower()
    async with anonymous(node) as replay:
        gone = await replay.get("/ui/jobs", headers={SESSION_HEADER: secret})
        assert gone.status_code == 401 and "log in again" in gone.json()["detail"]
        assert (
            await replay.post("/ui/logout", headers={SESSION_HEADER: secret})
        ).status_code == 401


async def test_pages_show_jobs_live_and_escape_what_members_send(node, api) -> None:
    """A job whose arguments, environment and output hold markup is shown as text, never run; and
    no page or fragment ever holds the session secret or the API token."""
    job = await node.jobs.submit_files(
        JobSubmission(module=COMMAND, args=["0", SCRIPT], env={"X": SCRIPT}, max_attempts=1)
    )
    with trio.fail_after(60):
        done = await node.jobs.wait(job.id)
    assert done is not None and done.state == JobState.SUCCEEDED, done
    async with logged_in(node, api) as browser:
        with trio.fail_after(30):
            while not all(node.blobs.store.has(ref.hash) for ref in done.outputs.values()):
                await trio.sleep(0.05)
        live = f"/ui/jobs/{job.id}/live"
        paths = ("/", "/login", f"/ui/jobs/{job.id}", *FRAGMENTS[:-1], live)
        pages = {path: await browser.get(path) for path in paths}
        for path, page in pages.items():
            assert page.status_code == 200, path
            assert SCRIPT not in page.text, path
            assert browser.headers[SESSION_HEADER] not in page.text, path
            assert node.api_token not in page.text, path
        listed = pages["/ui/jobs"].text
        assert job.id in listed and "succeeded" in listed
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listed
        detail = pages[live].text
        # Its history, its streams as text, and a download link per output.
        assert "submitted" in detail and "&#34;exit_code&#34;: 0" in detail
        assert "X=&lt;script&gt;alert(1)&lt;/script&gt;" in detail  # stdout, escaped
        for name, ref in done.outputs.items():
            link = f'href="/blobs/{ref.hash}" download="{PurePosixPath(name).name}" data-download'
            assert link in detail, name
        download = await browser.get(f"/blobs/{done.outputs['stdout'].hash}")
        assert download.status_code == 200 and SCRIPT.encode() in download.content
        assert download.headers["content-disposition"] == "attachment"
        assert download.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in download.headers["content-security-policy"]
        # A finished job's fragment with its outputs here no longer polls; while one is missing
        # it does, so the download link shows up when the output arrives.
        assert "hx-trigger" not in detail
        stderr = done.outputs["stderr"].hash
        assert (await api.delete(f"/blobs/{stderr}", params={"force": True})).status_code == 200
        waiting = (await browser.get(live)).text
        assert 'hx-trigger="every 1s"' in waiting and "not on this node yet" in waiting
        assert (await browser.get(f"/ui/jobs/{JOB_ID}/live")).status_code == 404


async def test_a_download_is_a_one_time_link_of_this_origin(node, api) -> None:
    """A browser cannot send the session header when it follows a link, and fetching the bytes
    with the header holds a whole output in the page's memory. So the script trades its session
    for a link (POST, with the header) that the browser follows and saves to disk as it streams:
    good once, for one blob, within a minute, from the node's own pages only, and not after the
    session ended."""
    kept = await node.blobs.store.add_bytes(b"a member's output", pin=True)
    other = await node.blobs.store.add_bytes(b"another blob", pin=True)
    port = httpx.URL(node.api_url).port
    async with logged_in(node, api) as browser:
        minted = await browser.post(f"/ui/blobs/{kept.hash}/download")
        assert minted.status_code == 200 and minted.headers["cache-control"] == "no-store"
        assert minted.json()["expires_in"] == DOWNLOAD_TTL_S
        url = minted.json()["url"]
        assert url.startswith(f"/blobs/{kept.hash}?download=")
        assert browser.headers[SESSION_HEADER] not in url
        forged = (await browser.post(f"/ui/blobs/{kept.hash}/download")).json()["url"]
        deleting = (await browser.post(f"/ui/blobs/{kept.hash}/download")).json()["url"]
        assert len({url, forged, deleting}) == 3
        missing = await browser.post(f"/ui/blobs/{'ab' * 32}/download")
        assert missing.status_code == 404
        async with anonymous(node) as link:
            # Another origin's page: another port of 127.0.0.1 is the same site, not the origin.
            for headers in (
                {"Sec-Fetch-Site": "same-site", "Origin": f"http://127.0.0.1:{port + 1}"},
                {"Sec-Fetch-Site": "same-site"},
                {"Sec-Fetch-Site": "cross-site"},
            ):
                refused = await link.get(url, headers=headers)
                assert refused.status_code == 403 and kept.hash not in refused.text, headers
            saved = await link.get(url, headers={"Sec-Fetch-Site": "same-origin"})
            assert saved.status_code == 200 and saved.content == b"a member's output"
            assert saved.headers["content-disposition"] == "attachment"
            assert saved.headers["x-content-type-options"] == "nosniff"
            again = await link.get(url, headers={"Sec-Fetch-Site": "same-origin"})
            assert again.status_code == 401 and "used already" in again.json()["detail"]
            # It opens its own blob only, with GET only.
            assert (await link.get(forged.replace(kept.hash, other.hash))).status_code == 401
            assert (await link.get(forged)).status_code == 401  # that try spent it
            assert (await link.delete(deleting)).status_code == 401
            assert node.blobs.store.has(kept.hash)
            # Minting needs the session.
            assert (await link.post(f"/ui/blobs/{kept.hash}/download")).status_code == 401
        ended = (await browser.post(f"/ui/blobs/{kept.hash}/download")).json()["url"]
        assert (await browser.post("/ui/logout")).status_code == 204
    async with anonymous(node) as link:
        assert (await link.get(ended)).status_code == 401


async def test_a_download_link_expires() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0])
    session = sessions.open()
    late = sessions.new_download("/blobs/x", session)
    now[0] = DOWNLOAD_TTL_S + 1
    assert not sessions.spend_download(late, "/blobs/x")
    timely = sessions.new_download("/blobs/x", session)
    assert sessions.spend_download(timely, "/blobs/x")
    assert not sessions.spend_download(timely, "/blobs/x")


async def test_cluster_view_shows_members_workers_and_the_blob_store(start_node, api, node) -> None:
    other = await start_node(join=node.join_ticket())
    await node.blobs.store.add_bytes(b"x" * 1000, pin=True)
    async with logged_in(node, api) as browser:
        member_row = re.compile(
            rf'data-id="{other.id}">\s*<td class="mono">{other.id}</td>\s*'
            r'<td class="state state-connected">'
        )
        worker_row = f'<tr class="worker" data-id="{other.id}">'
        with trio.fail_after(30):
            while not (
                member_row.search(fragment := (await browser.get("/ui/cluster")).text)
                and worker_row in fragment
            ):
                await trio.sleep(0.1)
        assert node.id[:16] in fragment  # this node is a worker too
        blobs = await node.blobs.store.list()
        pinned = sum(b.pinned for b in blobs)
        summary = (await browser.get("/ui/blobs")).text
        assert f'<p id="blobs">{len(blobs)} blobs, ' in summary and f"{pinned} pinned" in summary


async def test_cli_prints_a_one_time_login_link_without_the_token(node) -> None:
    with trio.fail_after(60):
        done = await trio.run_process(
            [*cli_argv(node), "dashboard"], capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr
    url = done.stdout.decode().strip()
    # In the fragment: the browser never sends it; the login page's script posts it.
    assert url.startswith(f"{node.api_url}/login#code=") and node.api_token not in url
    assert "logs in once" in done.stderr.decode()
    code = httpx.URL(url).fragment.removeprefix("code=")
    async with anonymous(node) as browser:
        secret = await log_in(browser, code=code)
        assert (await browser.get("/ui/jobs", headers={SESSION_HEADER: secret})).status_code == 200
    async with anonymous(node) as replay:
        assert (await replay.post("/login", json={"code": code})).status_code == 400


async def test_open_never_puts_the_login_code_on_a_command_line(node, tmp_path) -> None:
    """Every local account reads every process's command line in /proc: a browser started with
    the link would show its code to them while it starts, and they could redeem it first (a
    session: the join ticket, the cluster's secret). So `--open` hands the browser a private file
    that leads to the link, and the login page opens from there (another site: a local file)."""
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {opened}\n')
    browser.chmod(0o755)
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    env = {**os.environ, "BROWSER": f"{browser} %s", "XDG_RUNTIME_DIR": str(run)}
    with trio.fail_after(60):
        done = await trio.run_process(
            [*cli_argv(node), "dashboard", "--open"], capture_stdout=True, env=env, check=False
        )
    assert done.returncode == 0
    link = done.stdout.decode().strip()
    argv = opened.read_text()
    assert "code=" not in argv and link not in argv
    page = Path(httpx.URL(argv.strip()).path)
    assert argv.startswith("file://") and page.is_relative_to(run)
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    assert stat.S_IMODE(page.parent.stat().st_mode) == 0o700
    assert f'url={html.escape(link)}"' in page.read_text()
    code = httpx.URL(link).fragment.removeprefix("code=")
    async with anonymous(node) as local_file:
        # A navigation from a local file is cross-site: the login page alone opens so.
        cross_site = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
        login = await local_file.get("/login", headers=cross_site)
        assert login.status_code == 200 and login.headers["x-frame-options"] == "DENY"
        assert (await local_file.get("/", headers=cross_site)).status_code == 403
        refused = await local_file.post("/login", json={"code": code}, headers=cross_site)
        assert refused.status_code == 403
        assert await log_in(local_file, code=code)


async def test_cancel_button_cancels_a_waiting_job(start_node) -> None:
    idle = await start_node(max_jobs=0)  # no slot: its job waits until cancelled
    job = await idle.jobs.submit_files(JobSubmission(module=COMMAND, args=["0"]))
    async with anonymous(idle) as idle_api:
        idle_api.headers["Authorization"] = f"Bearer {idle.api_token}"
        async with logged_in(idle, idle_api) as browser:
            page = (await browser.get(f"/ui/jobs/{job.id}/live")).text
            assert f'hx-post="/ui/jobs/{job.id}/cancel"' in page and 'hx-trigger="every 1s"' in page
            secret = browser.headers.pop(SESSION_HEADER)
            port = httpx.URL(idle.api_url).port
            browser.cookies.set(session_cookie(port), secret)
            refused = await browser.post(f"/ui/jobs/{job.id}/cancel")
            assert refused.status_code == 401
            assert idle.jobs.store.get(job.id).state == JobState.PENDING
            done = await browser.post(f"/ui/jobs/{job.id}/cancel", headers={SESSION_HEADER: secret})
            assert done.status_code == 200 and 'id="job-state">cancelled<' in done.text
            assert "hx-trigger" not in done.text
    assert idle.jobs.store.get(job.id).state == JobState.CANCELLED


async def test_worker_labels_and_executors_from_heartbeats_are_escaped() -> None:
    """Labels come from other members' heartbeats: text on the page, never markup (heartbeats
    refuse such labels on arrival too; the page must not depend on that, so the view is built
    without validation)."""
    from p2pnode.api.dashboard import TEMPLATES
    from p2pnode.jobs.heartbeat import ExecutorOffer, WorkerView

    worker = WorkerView.model_construct(
        node_id="ab" * 32,
        sent_at=0.0,
        executors=[ExecutorOffer(kind="wasi", answers=True)],
        slots_total=2,
        slots_free=1,
        running=[],
        labels={SCRIPT: f'"><img src=x onerror=alert(1)>{SCRIPT}'},
        version=SCRIPT[:64],
        uptime_s=1.0,
        state="ready",
        age_s=0.5,
    )
    html = TEMPLATES.get_template("_cluster.html").render(members=[], workers=[worker], now=1.0)
    assert SCRIPT not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;=&#34;&gt;&lt;img src=x onerror" in html
    assert "1/2" in html  # slots used of total
