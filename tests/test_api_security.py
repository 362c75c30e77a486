"""The local API's guard, against a real node's API: token, Host, cross-site, body types and sizes,
validation at the boundary, docs that work offline, and the dashboard's session out of reach of
another port."""

from __future__ import annotations

import json
import logging
import stat

import httpx
import pytest
import trio

from p2pnode.api.auth import MAX_JSON_BODY, session_cookie

pytestmark = pytest.mark.trio

HASH = "ab" * 32


def one_line_detail(response: httpx.Response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail, detail
    return detail


async def test_health_needs_no_token_everything_else_does(node, api) -> None:
    async with httpx.AsyncClient(base_url=node.api_url) as anonymous:
        assert (await anonymous.get("/health")).status_code == 200
        for method, path in [
            ("GET", "/status"),
            ("POST", "/tickets/join"),
            ("GET", "/blobs"),
            ("GET", "/jobs"),
            ("GET", f"/blobs/{HASH}"),
        ]:
            refused = await anonymous.request(method, path)
            assert refused.status_code == 401, (method, path)
            assert refused.headers["www-authenticate"] == "Bearer"
            assert one_line_detail(refused).startswith("no API token")
        wrong = await anonymous.get(
            "/status", headers={"Authorization": f"Bearer {node.api_token[:-1]}x"}
        )
        assert wrong.status_code == 401 and one_line_detail(wrong).startswith("wrong API token")
        other_scheme = await anonymous.get(
            "/status", headers={"Authorization": f"Basic {node.api_token}"}
        )
        assert other_scheme.status_code == 401
    assert (await api.get("/status")).status_code == 200


async def test_token_and_data_folder_are_private_and_node_json_public_facts_only(node) -> None:
    data = node.settings.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    token_file = data / "api-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text() == node.api_token + "\n" and len(node.api_token) >= 43
    info = json.loads((data / "node.json").read_text())
    assert set(info) == {"id", "api_url", "pid"}


async def test_loose_data_folder_is_tightened(start_node, tmp_path) -> None:
    (tmp_path / "node1").mkdir(mode=0o755)
    (tmp_path / "node1").chmod(0o755)
    node = await start_node()
    assert stat.S_IMODE(node.settings.data_dir.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:{port}",
        "localhost.evil.example:{port}",
        "127.0.0.1:1",
        "127.0.0.1",
        "10.0.0.1:{port}",
        "",
    ],
)
async def test_foreign_host_is_misdirected(node, api, host: str) -> None:
    port = node.api_url.rsplit(":", 1)[1]
    for path in ("/health", "/status", "/docs"):
        refused = await api.get(path, headers={"Host": host.format(port=port)})
        assert refused.status_code == 421, (host, path)
        assert "its own address" in one_line_detail(refused)


async def test_localhost_is_the_api_own_name(node, api) -> None:
    port = node.api_url.rsplit(":", 1)[1]
    assert (await api.get("/status", headers={"Host": f"localhost:{port}"})).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://localhost:1"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
async def test_cross_site_requests_are_refused(api, headers: dict[str, str]) -> None:
    for method, path in [
        ("POST", "/tickets/join"),
        ("GET", "/status"),
        ("GET", "/health"),
        ("OPTIONS", "/status"),
    ]:
        refused = await api.request(method, path, headers=headers)
        assert refused.status_code == 403, (headers, path)
        assert one_line_detail(refused) == "cross-site requests are refused"
        assert not any(h.startswith("access-control-") for h in refused.headers)


async def test_same_origin_browser_requests_pass(node, api) -> None:
    headers = {"Origin": node.api_url, "Sec-Fetch-Site": "same-origin"}
    assert (await api.post("/tickets/join", headers=headers)).status_code == 200


async def test_json_bodies_only_as_application_json(api, tmp_path) -> None:
    body = json.dumps({"path": str(tmp_path / "x")})
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ):
        headers = {"Content-Type": content_type} if content_type else {}
        refused = await api.post("/blobs", content=body, headers=headers)
        assert refused.status_code == 415, content_type
        assert "application/json" in one_line_detail(refused)
    assert (
        await api.put("/blobs", content=b"x", headers={"Content-Type": "application/json"})
    ).status_code == 415


async def raw_request(node, head: str, body: bytes = b"") -> tuple[int, dict]:
    host, port = node.api_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            chunk = await stream.receive_some()
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


async def test_oversized_or_unmeasured_json_body_is_refused(node) -> None:
    port = node.api_url.rsplit(":", 1)[1]
    auth = f"Authorization: Bearer {node.api_token}"
    status, reply = await raw_request(
        node,
        f"POST /jobs HTTP/1.1\nHost: 127.0.0.1:{port}\n{auth}\nContent-Type: application/json\n"
        f"Content-Length: {MAX_JSON_BODY + 1}\n",
    )
    assert status == 413 and reply["detail"] == "request body over 17 MiB"
    status, reply = await raw_request(
        node,
        f"POST /jobs HTTP/1.1\nHost: 127.0.0.1:{port}\n{auth}\nContent-Type: application/json\n"
        "Transfer-Encoding: chunked\n",
        b"0\r\n\r\n",
    )
    assert status == 411


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/blobs/nothex"),
        ("GET", f"/blobs/{HASH[:-1]}/ticket"),
        ("DELETE", f"/blobs/{HASH.upper()}"),
        ("POST", "/blobs/zz/pin"),
        ("DELETE", "/blobs/../pin"),
        ("GET", "/jobs/job_1"),
        ("POST", "/jobs/12345/wait"),
        ("POST", "/jobs/x/cancel"),
        ("POST", "/jobs/job_/outputs"),
        ("GET", "/jobs?limit=-1"),
        ("GET", "/jobs?state=bogus"),
        ("POST", "/jobs/job_01M8CRH8D5H83H6EVKWEVXEHTJ/wait?timeout=nan"),
    ],
)
async def test_malformed_parameters_are_one_line_422(api, caplog, method: str, path: str) -> None:
    caplog.set_level(logging.INFO)
    refused = await api.request(method, path)
    assert refused.status_code in (404, 422), (
        refused.text
    )  # ".." is resolved by the client: no such route
    if refused.status_code == 422:
        assert one_line_detail(refused).startswith("invalid ")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/jobs", {"module_blob": HASH, "workflw": "main"}, "workflw"),
        ("/jobs", {"module_blob": HASH, "limits": {"fuel": 0}}, "limits.fuel"),
        ("/jobs", {"module_blob": "nothex"}, "module_blob"),
        ("/blobs", {"path": "/tmp/x", "pinned": False}, "pinned"),
        ("/blobs", {"path": "relative/x"}, "path"),
        ("/blobs/fetch", {"ticket": "x", "extra": 1}, "extra"),
        (f"/blobs/{HASH}/export", {"path": "/tmp/x", "forc": True}, "forc"),
    ],
)
async def test_bodies_are_validated_by_their_model(api, path: str, body: dict, field: str) -> None:
    refused = await api.post(path, json=body)
    assert refused.status_code == 422
    assert one_line_detail(refused).startswith(f"invalid {field}: ")


async def test_not_json_is_one_line_422(api) -> None:
    refused = await api.post(
        "/blobs/fetch", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert refused.status_code == 422 and one_line_detail(refused).startswith("invalid ")


async def test_docs_work_offline(node) -> None:
    async with httpx.AsyncClient(
        base_url=node.api_url
    ) as browser:  # no token: a browser cannot send one
        for page, assets in [
            ("/docs", ["swagger-ui-bundle.js", "swagger-ui.css"]),
            ("/redoc", ["redoc.standalone.js"]),
        ]:
            html = (await browser.get(page)).text
            assert "cdn" not in html and "https://" not in html.replace(
                "https://fastapi.tiangolo.com", ""
            ), page
            for asset in assets:
                assert f"/static-offline-docs/{asset}" in html
                served = await browser.get(f"/static-offline-docs/{asset}")
                assert served.status_code == 200 and len(served.content) > 100_000, asset
        schema = (await browser.get("/openapi.json")).json()
    fetch = schema["paths"]["/blobs/fetch"]["post"]
    assert "application/x-ndjson" in fetch["responses"]["200"]["content"]
    assert fetch["security"] == [{"bearer": []}]
    assert schema["paths"]["/health"]["get"]["security"] == []
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for code in ("401", "403", "421", "422"):
        assert (
            fetch["responses"][code]["content"]["application/json"]["schema"]["properties"][
                "detail"
            ]["type"]
            == "string"
        )
    assert "application/octet-stream" in schema["paths"]["/blobs"]["put"]["requestBody"]["content"]


async def test_api_bound_by_name_answers_to_its_address_and_localhost(start_node) -> None:
    node = await start_node(http_host="localhost")
    port = node.api_url.rsplit(":", 1)[1]
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {node.api_token}"}) as client:
        for host in ("localhost", "127.0.0.1"):
            assert (
                await client.get(
                    f"http://127.0.0.1:{port}/status", headers={"Host": f"{host}:{port}"}
                )
            ).status_code == 200
        assert (
            await client.get(
                f"http://127.0.0.1:{port}/status", headers={"Host": f"evil.example:{port}"}
            )
        ).status_code == 421


async def test_what_another_port_gets_from_a_browser_reads_nothing(node, api) -> None:
    """Browsers send a host's cookies to all its ports: a web server any local account runs on
    127.0.0.1 gets every cookie the node ever set in a browser, and could replay them. So no cookie
    grants anything, not even one holding a live session secret: no fragment, JSON, download or
    dashboard action, and the pages a browser opens without the header hold no data."""
    blob = await node.blobs.store.add_bytes(b"a member's data", pin=True)
    job_id = "job_00000000000000000000000000"
    code = (await api.post("/login-codes")).json()["code"]
    async with httpx.AsyncClient(base_url=node.api_url) as browser:
        secret = (await browser.post("/login", json={"code": code})).json()["session"]
        cookies = dict(browser.cookies)
    port = httpx.URL(node.api_url).port
    cookies[session_cookie(port)] = secret
    ticket = node.join_ticket()
    async with httpx.AsyncClient(base_url=node.api_url, cookies=cookies) as foreign:
        for method, path in [
            ("GET", "/ui/node"),
            ("GET", "/ui/cluster"),
            ("GET", "/ui/jobs"),
            ("GET", "/ui/blobs"),
            ("GET", f"/ui/jobs/{job_id}/live"),
            ("GET", "/status"),
            ("GET", "/jobs"),
            ("GET", "/blobs"),
            ("GET", f"/blobs/{blob.hash}"),
            ("GET", f"/jobs/{job_id}/logs"),
            ("POST", "/tickets/join"),
            ("POST", f"/ui/jobs/{job_id}/cancel"),
            ("POST", "/ui/logout"),
        ]:
            refused = await foreign.request(method, path, headers={"HX-Request": "true"})
            assert refused.status_code == 401, (method, path)
            assert ticket not in refused.text and "member" not in refused.text
        for path in ("/", f"/ui/jobs/{job_id}", "/login"):
            shell = await foreign.get(path)
            assert shell.status_code == 200 and ticket not in shell.text, path
            assert node.id not in shell.text and secret not in shell.text, path
    # The same secret as the dashboard's script sends it reads, and the session still lives.
    async with httpx.AsyncClient(base_url=node.api_url) as script:
        node_fragment = await script.get("/ui/node", headers={"X-P2pnode-Session": secret})
        assert node_fragment.status_code == 200 and ticket in node_fragment.text
