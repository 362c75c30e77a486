"""The CLI's promises without a node: light imports, --version, and one `error:` line for every
failure, against a real HTTP server that is not a p2pnode and against invalid settings."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

import p2pnode
from tests.nodeproc import run_cli

HEAVY = ("fastapi", "hypercorn", "iroh", "wasmtime", "trio", "httpx", "rich")


def test_cli_imports_no_server_stack() -> None:
    """Every command registered and resolved, and still none of the node's stack loaded."""
    code = (
        "import sys, click; from p2pnode.cli import cli\n"
        "def walk(group):\n"
        "    for name in group.list_commands(None):\n"
        "        command = group.get_command(None, name)\n"
        "        if isinstance(command, click.Group): walk(command)\n"
        "walk(cli)\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []


def test_version() -> None:
    result = run_cli("--version")
    assert result.stdout.strip() == f"p2pnode {p2pnode.__version__}"


@pytest.fixture(scope="module")
def not_a_node() -> Iterator[str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.not_a_node"], stdout=subprocess.PIPE, text=True
    )
    try:
        port = server.stdout.readline().strip()  # type: ignore[union-attr]
        yield f"127.0.0.1:{port}"  # no scheme: the CLI must accept it
    finally:
        server.kill()
        server.communicate()


@pytest.mark.parametrize(
    ("answer", "code", "message"),
    [
        ("502/html", 1, "answered HTTP 502 with an HTML page; is it a p2pnode?"),
        ("200/html", 1, "answered an HTML page, not a p2pnode reply; is it a p2pnode?"),
        ("500/empty", 1, "answered HTTP 500 with an empty body; is it a p2pnode?"),
        ("413/text", 2, "answered HTTP 413 with 'Bad Gateway'; is it a p2pnode?"),
        (
            "200/json",
            1,
            """answered '{"weather": "sunny"}', not a p2pnode reply; is it a p2pnode?""",
        ),
        ("200/garbage", 1, "broke off the exchange (BadStatusLine); is it a p2pnode?"),
    ],
)
def test_a_server_that_is_not_a_node_is_named_as_such(
    not_a_node: str, answer: str, code: int, message: str
) -> None:
    result = run_cli("--api", f"{not_a_node}/{answer}", "status", check=False)
    assert result.returncode == code
    assert result.stderr == f"error: the server at http://{not_a_node}/{answer} {message}\n"


@pytest.mark.parametrize(("status", "code"), [("422", 2), ("400", 2), ("409", 1), ("404", 1)])
def test_refusals_are_one_line_and_bad_input_exits_2(
    not_a_node: str, status: str, code: int
) -> None:
    result = run_cli("--api", f"{not_a_node}/{status}/detail", "ticket", check=False)
    assert result.returncode == code
    assert result.stderr == "error: request refused: path: Field required\n"


@pytest.mark.parametrize("api", ["ftp://127.0.0.1:3020", "http://127.0.0.1:99999", "http://"])
def test_a_malformed_api_url_is_bad_input(api: str) -> None:
    result = run_cli("--api", api, "status", check=False)
    assert result.returncode == 2
    assert result.stderr == f"error: --api {api} is not an API URL such as http://127.0.0.1:3020\n"


def test_usage_errors_are_one_line() -> None:
    result = run_cli("blob", "get", check=False)
    assert result.returncode == 2
    assert result.stderr == "error: Missing argument 'TICKET'. (see `p2pnode blob get -h`)\n"
    bare = run_cli("blob", check=False)
    assert (
        bare.stderr.startswith("Usage: p2pnode blob [OPTIONS] COMMAND [ARGS]...\n")
        and "error" not in bare.stderr
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"HTTP_PORT": "abc"},
            "HTTP_PORT='abc': Input should be a valid integer,"
            " unable to parse string as an integer",
        ),
        (
            {"P2PNODE_MAX_JOBS": "-1"},
            "P2PNODE_MAX_JOBS='-1': Input should be greater than or equal to 0",
        ),
    ],
)
def test_invalid_environment_is_one_line_naming_the_variable(
    tmp_path, env: dict[str, str], message: str
) -> None:
    import os

    result = subprocess.run(
        [sys.executable, "-m", "p2pnode", "start", "--data", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: invalid setting {message}\n"
    assert not (tmp_path / "d").exists()


def test_every_command_help_has_an_example() -> None:
    import click

    from p2pnode.cli import cli

    def walk(group: click.Group, path: str) -> Iterator[tuple[str, click.Command]]:
        for name in group.list_commands(click.Context(group)):
            command = group.get_command(click.Context(group), name)
            assert command is not None
            yield f"{path} {name}", command
            if isinstance(command, click.Group):
                yield from walk(command, f"{path} {name}")

    lacking = [
        path for path, command in walk(cli, "p2pnode") if "p2pnode " not in (command.help or "")
    ]
    assert lacking == []
