"""The dashboard against a real node's API: its pages and fragments, what they show, that what
members send is escaped, and its access rules (login code or token, session cookie, CSRF, Host and
Origin)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from p2pnode.api.auth import LOGIN_CODE_TTL_S, Sessions, session_cookie
from p2pnode.jobs.model import JobState
from p2pnode.jobs.service import JobSubmission
from tests.conftest import cli_argv

pytestmark = pytest.mark.trio

COMMAND = Path(__file__).resolve().parent.parent / "examples" / "command.wat"
SCRIPT = "<script>alert(1)</script>"


def anonymous(node) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.api_url, timeout=30)


@contextlib.asynccontextmanager
async def logged_in(node, api) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client holding a session cookie, obtained with a one-time code."""
    code = (await api.post("/login-codes")).json()["code"]
    async with anonymous(node) as client:
        answer = await client.get("/login", params={"code": code})
        assert answer.status_code == 303 and answer.headers["location"] == "/", answer.text
        yield client


def cookie_of(answer: httpx.Response) -> str:
    return answer.headers["set-cookie"]


def csrf_of(page: str) -> str:
    found = re.search(
        r"&#34;X-CSRF-Token&#34;: &#34;([^&]+)&#34;|\"X-CSRF-Token\": \"([^\"]+)\"", page
    )
    assert found, page
    return found.group(1) or found.group(2)


async def test_without_a_session_pages_send_to_login_and_fragments_tell_htmx(node) -> None:
    async with anonymous(node) as browser:
        for path in ("/", "/ui/jobs", "/ui/cluster"):
            answer = await browser.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/login", path
        fragment = await browser.get("/ui/jobs", headers={"HX-Request": "true"})
        assert fragment.status_code == 401 and fragment.headers["hx-redirect"] == "/login"
        login = await browser.get("/login")
        assert login.status_code == 200 and 'name="token"' in login.text
        assert "default-src 'self'" in login.headers["content-security-policy"]
        assert login.headers["x-frame-options"] == "DENY"
        # The JSON API keeps answering 401 to a client without credentials.
        assert (await browser.get("/jobs")).status_code == 401
        assert (await browser.post("/login-codes")).status_code == 401


async def test_static_assets_are_served_from_the_package(node) -> None:
    async with anonymous(node) as browser:
        htmx = await browser.get("/static/htmx.min.js")
        assert htmx.status_code == 200 and htmx.headers["content-type"].startswith(
            "text/javascript"
        )
        assert htmx.text.startswith("/*! htmx 2.") and "Zero-Clause BSD" in htmx.text[:300]
        assert (await browser.get("/static/dashboard.css")).status_code == 200
        assert (await browser.get("/static/htmx.LICENSE")).status_code == 404
        assert (await browser.get("/static/..%2fdashboard.py")).status_code == 404


async def test_one_time_code_logs_in_once_with_a_strict_cookie(node, api) -> None:
    code = (await api.post("/login-codes")).json()
    assert code["expires_in"] == LOGIN_CODE_TTL_S
    async with anonymous(node) as browser:
        wrong = await browser.get("/login", params={"code": code["code"][:-1] + "x"})
        assert wrong.status_code == 400 and "used already or has expired" in wrong.text
        assert "set-cookie" not in wrong.headers
        answer = await browser.get("/login", params={"code": code["code"]})
        assert answer.status_code == 303 and answer.headers["location"] == "/"
        cookie = cookie_of(answer)
        port = httpx.URL(node.api_url).port
        assert cookie.startswith(f"{session_cookie(port)}=")
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= flags, cookie
        assert "secure" not in flags  # plain http on loopback: a Secure cookie would be dropped
        assert answer.headers["referrer-policy"] == "no-referrer"
        home = await browser.get("/")
        assert home.status_code == 200 and node.id in home.text
        assert node.join_ticket()[:40] in home.text
        # The API token never reaches the page.
        assert node.api_token not in home.text
    async with anonymous(node) as other:
        again = await other.get("/login", params={"code": code["code"]})
        assert again.status_code == 400 and "set-cookie" not in again.headers


async def test_expired_code_and_closed_session_are_refused() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0])
    code = sessions.new_code()
    now[0] = LOGIN_CODE_TTL_S + 1
    assert sessions.redeem(code) is None
    session = sessions.open()
    assert sessions.get(session.id) == session
    sessions.close(session.id)
    assert sessions.get(session.id) is None
    later = sessions.open()
    now[0] += 13 * 3600
    assert sessions.get(later.id) is None


async def test_token_form_logs_in_and_a_wrong_token_does_not(node) -> None:
    async with anonymous(node) as browser:
        wrong = await browser.post("/login", data={"token": node.api_token[:-1] + "x"})
        assert wrong.status_code == 401 and "Wrong token" in wrong.text
        assert "set-cookie" not in wrong.headers
        right = await browser.post("/login", data={"token": node.api_token})
        assert right.status_code == 303 and "httponly" in cookie_of(right).lower()
        assert (await browser.get("/")).status_code == 200
        # The form is small and form-encoded; anything else is refused before it is read.
        big = await browser.post("/login", data={"token": "x" * 5000})
        assert big.status_code == 413
        as_json = await browser.post("/login", json={"token": node.api_token})
        assert as_json.status_code == 415


async def test_cross_site_and_foreign_host_are_refused_with_a_session(node, api) -> None:
    async with logged_in(node, api) as browser:
        assert (await browser.get("/")).status_code == 200
        evil = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
        assert (await browser.get("/", headers=evil)).status_code == 403
        assert (
            await browser.get("/ui/jobs", headers={"Sec-Fetch-Site": "cross-site"})
        ).status_code == 403
        port = httpx.URL(node.api_url).port
        rebinding = await browser.get("/", headers={"Host": f"evil.example:{port}"})
        assert rebinding.status_code == 421
    async with anonymous(node) as stranger:
        forged = await stranger.post(
            "/login", data={"token": node.api_token}, headers={"Origin": "http://evil.example"}
        )
        assert forged.status_code == 403 and "set-cookie" not in forged.headers


async def test_session_posts_need_the_csrf_token_and_only_reach_the_dashboard(node, api) -> None:
    async with logged_in(node, api) as browser:
        csrf = csrf_of((await browser.get("/")).text)
        assert (await browser.post("/ui/logout")).status_code == 403
        wrong = await browser.post("/ui/logout", headers={"X-CSRF-Token": csrf[:-1] + "x"})
        assert wrong.status_code == 403 and wrong.json()["detail"] == "missing or wrong CSRF token"
        # A session reads the API, but changes nothing outside the dashboard's buttons.
        assert (await browser.get("/jobs")).status_code == 200
        refused = await browser.post("/blobs/gc", headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403
        out = await browser.post("/ui/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 200 and out.headers["hx-redirect"] == "/login"
        assert "max-age=0" in cookie_of(out).lower() or "expires" in cookie_of(out).lower()
        browser.cookies.clear()
        port = httpx.URL(node.api_url).port
        browser.cookies.set(session_cookie(port), "closed-session-id")
        assert (await browser.get("/")).status_code == 303


async def test_logged_out_session_is_gone_server_side(node, api) -> None:
    async with logged_in(node, api) as browser:
        cookies = dict(browser.cookies)
        csrf = csrf_of((await browser.get("/")).text)
        assert (await browser.post("/ui/logout", headers={"X-CSRF-Token": csrf})).status_code == 200
    async with anonymous(node) as replay:
        replay.cookies.update(cookies)
        assert (await replay.get("/")).status_code == 303


async def test_pages_show_jobs_live_and_escape_what_members_send(node, api) -> None:
    """A job whose arguments, environment and output hold markup is shown as text, never run."""
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
        pages = {
            "/": await browser.get("/"),
            "/ui/jobs": await browser.get("/ui/jobs"),
            f"/ui/jobs/{job.id}": await browser.get(f"/ui/jobs/{job.id}"),
            f"/ui/jobs/{job.id}/live": await browser.get(f"/ui/jobs/{job.id}/live"),
        }
        for path, page in pages.items():
            assert page.status_code == 200, path
            assert SCRIPT not in page.text, path
        for path in ("/ui/jobs", "/"):
            assert job.id in pages[path].text and "succeeded" in pages[path].text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[path].text
        detail = pages[f"/ui/jobs/{job.id}"].text
        # Its history, its streams as text, and a download link per output.
        assert "submitted" in detail and "&#34;exit_code&#34;: 0" in detail
        assert "X=&lt;script&gt;alert(1)&lt;/script&gt;" in detail  # stdout, escaped
        for name, ref in done.outputs.items():
            assert f'href="/blobs/{ref.hash}"' in detail, name
        download = await browser.get(f"/blobs/{done.outputs['stdout'].hash}")
        assert download.status_code == 200 and SCRIPT.encode() in download.content
        # A finished job's fragment no longer polls; the list keeps polling.
        assert "hx-trigger" not in pages[f"/ui/jobs/{job.id}/live"].text
        assert 'hx-get="/ui/jobs" hx-trigger="every 1s"' in pages["/"].text
        assert (await browser.get("/ui/jobs/job_00000000000000000000000000")).status_code == 404


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
        assert summary in (await browser.get("/")).text


async def test_cli_prints_a_one_time_login_link_without_the_token(node) -> None:
    with trio.fail_after(60):
        done = await trio.run_process(
            [*cli_argv(node), "dashboard"], capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr
    url = done.stdout.decode().strip()
    assert url.startswith(f"{node.api_url}/login?code=") and node.api_token not in url
    assert "logs in once" in done.stderr.decode()
    async with anonymous(node) as browser:
        answer = await browser.get(url)
        assert answer.status_code == 303 and "httponly" in cookie_of(answer).lower()
        assert (await browser.get("/")).status_code == 200
    async with anonymous(node) as replay:
        assert (await replay.get(url)).status_code == 400


async def test_cancel_button_cancels_a_waiting_job(start_node) -> None:
    idle = await start_node(max_jobs=0)  # no slot: its job waits until cancelled
    job = await idle.jobs.submit_files(JobSubmission(module=COMMAND, args=["0"]))
    async with anonymous(idle) as idle_api:
        idle_api.headers["Authorization"] = f"Bearer {idle.api_token}"
        async with logged_in(idle, idle_api) as browser:
            page = (await browser.get(f"/ui/jobs/{job.id}")).text
            assert f'hx-post="/ui/jobs/{job.id}/cancel"' in page and 'hx-trigger="every 1s"' in page
            refused = await browser.post(f"/ui/jobs/{job.id}/cancel")
            assert refused.status_code == 403
            assert idle.jobs.store.get(job.id).state == JobState.PENDING
            done = await browser.post(
                f"/ui/jobs/{job.id}/cancel", headers={"X-CSRF-Token": csrf_of(page)}
            )
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
