"""The dashboard in a real browser: Debian's headless Chromium, driven by selenium through Debian's
chromedriver, against a cluster of two node processes. `./test.sh` installs Chromium when it runs
as root with apt-get; elsewhere without Chromium this test is skipped, saying why."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess, run_cli, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
COMMAND = Path(__file__).resolve().parent.parent / "examples" / "command.wat"
PAGE_TIMEOUT_S = 60

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="Chromium and chromedriver not found (./test.sh installs them with apt-get when it "
        "runs as root: apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    yield from chromium(tmp_path)


@pytest.fixture
def browser_without_storage(tmp_path: Path) -> Iterator[object]:
    """Site data blocked (cookies and storage, as privacy settings do): localStorage throws."""
    yield from chromium(tmp_path, {"profile.default_content_setting_values.cookies": 2})


def chromium(tmp_path: Path, prefs: dict[str, object] | None = None) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    if prefs:
        options.add_experimental_option("prefs", prefs)
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    # With both paths given, selenium never runs selenium-manager (which would download).
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",  # we run as root in CI
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def test_browser_watches_a_cli_job_succeed_without_a_reload(tmp_path: Path, browser) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    origin = NodeProcess(tmp_path / "origin", "--max-jobs", "0")
    try:
        worker = NodeProcess(tmp_path / "worker", "--join", origin.ticket)
        try:
            login = origin.cli("dashboard").stdout.strip()
            driver.get(login)
            wait_for(
                lambda: driver.current_url == f"{origin.api}/",
                "the one-time link to log in and lead to the dashboard",
                timeout=PAGE_TIMEOUT_S,
            )
            # The session lives in this origin's localStorage, never in a cookie.
            secret = driver.execute_script("return localStorage.getItem('p2pnode-session');")
            assert secret and driver.get_cookies() == []

            def row_state(kind: str, node_id: str) -> str | None:
                """In one script: htmx may swap the rows between two webdriver calls."""
                state: str | None = driver.execute_script(
                    "const cell = document.querySelector(arguments[0]);"
                    "return cell ? cell.textContent.trim() : null;",
                    f'tr.{kind}[data-id="{node_id}"] td.state',
                )
                return state

            # Both members: the worker in the member list, both nodes among the workers.
            wait_for(
                lambda: (
                    row_state("member", worker.id) == "connected"
                    and row_state("worker", worker.id) == "ready"
                    and row_state("worker", origin.id) is not None
                ),
                "the page to show both nodes",
                timeout=PAGE_TIMEOUT_S,
            )
            # A reload would drop this mark: the page must change in place.
            driver.execute_script("window.notReloaded = true;")
            job_id = origin.cli("job", "submit", "--module", str(COMMAND), "--", "0", "hi")
            job_id_text = job_id.stdout.strip()
            began = time.monotonic()
            wait_for(
                lambda: row_state("job", job_id_text) == "succeeded",
                f"job {job_id_text} to show succeeded",
                timeout=PAGE_TIMEOUT_S,
            )
            print(f"job shown succeeded {time.monotonic() - began:.1f} s after submit")
            assert driver.execute_script("return window.notReloaded === true;")
            screenshot = tmp_path / "dashboard.png"
            assert driver.save_screenshot(str(screenshot))
            content = screenshot.read_bytes()
            assert content.startswith(b"\x89PNG\r\n\x1a\n") and len(content) > 10_000
            # The job's page shows its stdout as the program printed it.
            driver.execute_script(
                "document.querySelector(arguments[0]).click();",
                f'tr.job[data-id="{job_id_text}"] a',
            )
            wait_for(
                lambda: (
                    "command.wat\n0\nhi"
                    in driver.execute_script(
                        "return [...document.querySelectorAll('pre.log')]"
                        ".map(e => e.textContent).join('\\n');"
                    )
                ),
                "the job page to show its stdout",
                timeout=PAGE_TIMEOUT_S,
            )
            # An output downloads as a link the browser follows and saves as it streams (minted
            # by the script with the session header): the page never holds the bytes.
            driver.execute_script(
                "for (const f of ['blob', 'arrayBuffer', 'text'])"
                "  Response.prototype[f] = () => { throw new Error('the bytes in the page'); };"
                "URL.createObjectURL = () => { throw new Error('the bytes in the page'); };"
            )
            driver.execute_script(
                "[...document.querySelectorAll('#outputs tr')]"
                ".find(row => row.cells[0].textContent === 'stdout')"
                ".querySelector('a[data-download]').click();"
            )
            saved = downloads / "stdout"
            wait_for(
                lambda: saved.exists() and saved.read_text().startswith("command.wat\n0\nhi"),
                "the stdout download to be saved",
                timeout=PAGE_TIMEOUT_S,
            )
            assert secret not in driver.page_source
            # Log out: the session is gone on the node and in the browser.
            driver.find_element(By.CSS_SELECTOR, "button[data-logout]").click()
            wait_for(
                lambda: driver.current_url == f"{origin.api}/login",
                "the log-out button to lead to the login page",
                timeout=PAGE_TIMEOUT_S,
            )
            assert driver.execute_script("return localStorage.length;") == 0
            driver.get(f"{origin.api}/")
            assert driver.current_url == f"{origin.api}/login"
            # The old secret, put back by hand, is refused: the script sends the user to log in.
            driver.execute_script("localStorage.setItem('p2pnode-session', arguments[0]);", secret)
            driver.get(f"{origin.api}/")
            wait_for(
                lambda: driver.current_url == f"{origin.api}/login",
                "a closed session to lead to the login page",
                timeout=PAGE_TIMEOUT_S,
            )
            # The pasted token logs in too, and never shows in the address bar.
            token = (origin.data_dir / "api-token").read_text().strip()
            field = driver.find_element(By.CSS_SELECTOR, 'input[name="token"]')
            field.send_keys(token)
            field.submit()
            wait_for(
                lambda: (
                    driver.current_url == f"{origin.api}/"
                    and driver.execute_script(
                        "return document.getElementById('join-ticket') !== null;"
                    )
                ),
                "the pasted token to log in and show the join ticket",
                timeout=PAGE_TIMEOUT_S,
            )
            # A job this node does not have: its page says so instead of staying blank.
            driver.get(f"{origin.api}/ui/jobs/job_00000000000000000000000000")
            wait_for(
                lambda: "error: no job" in driver.find_element(By.ID, "job").text,
                "the page of an unknown job to say so",
                timeout=PAGE_TIMEOUT_S,
            )
        finally:
            worker.stop()
    finally:
        origin.stop()


def test_browser_that_keeps_no_site_data_is_told_why_it_cannot_log_in(
    tmp_path: Path, browser_without_storage
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser_without_storage
    node = NodeProcess(tmp_path / "node")
    try:
        driver.get(node.cli("dashboard").stdout.strip())
        wait_for(
            lambda: "site data" in driver.find_element(By.ID, "login-error").text,
            "the login page to say the browser blocks site data",
            timeout=PAGE_TIMEOUT_S,
        )
        # A shell does not stay blank either: it leads to the login page, which says it again.
        driver.get(f"{node.api}/")
        wait_for(
            lambda: driver.current_url == f"{node.api}/login",
            "the dashboard to lead to the login page",
            timeout=PAGE_TIMEOUT_S,
        )
    finally:
        node.stop()


def test_dashboard_open_logs_in_through_a_private_file(tmp_path: Path, browser) -> None:
    """`p2pnode dashboard --open` gives the browser a local file, not the link (whose code any
    local account could read on the browser's command line): from there it lands logged in."""
    driver = browser
    opened = tmp_path / "opened"
    recorder = tmp_path / "browser"
    recorder.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {opened}\n')
    recorder.chmod(0o755)
    node = NodeProcess(tmp_path / "node")
    try:
        run_cli(
            "--api",
            node.api,
            "--data",
            str(node.data_dir),
            "dashboard",
            "--open",
            env={"BROWSER": f"{recorder} %s", "XDG_RUNTIME_DIR": str(tmp_path)},
        )
        page = opened.read_text()
        assert page.startswith("file://") and "code=" not in page
        driver.get(page)
        wait_for(
            lambda: (
                driver.current_url == f"{node.api}/"
                and driver.execute_script("return document.getElementById('join-ticket') !== null;")
            ),
            "the local file to lead to the dashboard, logged in",
            timeout=PAGE_TIMEOUT_S,
        )
    finally:
        node.stop()


def test_a_download_link_followed_from_another_origins_page_is_refused(
    tmp_path: Path, browser
) -> None:
    """Another local account's web page on another port of 127.0.0.1 (the same site, another
    origin) that got hold of a download link: Chromium follows it there as a cross-site
    navigation, which the node refuses; the link stays good for the dashboard's own page."""
    import httpx

    driver = browser
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("a member's output")
    node = NodeProcess(tmp_path / "node")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=foreign,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        blob_hash = node.cli("blob", "add", str(secret_file)).stdout.split()[1]
        with httpx.Client(base_url=node.api, timeout=30) as api:
            code = api.post("/login-codes", headers=node.headers).json()["code"]
            session = {
                "X-P2pnode-Session": api.post("/login", json={"code": code}).json()["session"]
            }
            url = api.post(f"/ui/blobs/{blob_hash}/download", headers=session).json()["url"]
            (foreign / "index.html").write_text(
                f'<a id="go" href="{node.api}{url}" download="stolen">go</a>'
                "<script>document.getElementById('go').click();</script>"
            )
            wait_for(
                lambda: api.get(f"http://127.0.0.1:{port}/").status_code == 200,
                "the other origin's web server",
            )
            driver.get(f"http://127.0.0.1:{port}/")
            wait_for(
                lambda: (
                    driver.current_url.startswith(node.api)
                    and "cross-site requests are refused" in driver.page_source
                ),
                "the node to refuse the link followed from another origin",
                timeout=PAGE_TIMEOUT_S,
            )
            assert not any(downloads.iterdir())
            own_page = api.get(url, headers={"Sec-Fetch-Site": "same-origin"})
            assert own_page.status_code == 200 and own_page.text == "a member's output"
    finally:
        server.kill()
        server.wait()
        node.stop()
