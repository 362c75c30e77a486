"""What the CLI imports before it does anything, which every command pays: `--version` and `-h`
load click and the top package only, a command's help its own module, and no HTTP stack or
pydantic before a request is made. Counted in modules, so load on the machine cannot move it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodeproc import run_cli

TOP = {
    "p2pnode",
    "p2pnode.api",
    "p2pnode.api.client",
    "p2pnode.apitoken",
    "p2pnode.cli",
    "p2pnode.fsutil",
}
"""The project's modules every command loads."""
NOT_BEFORE_A_REQUEST = ("pydantic", "http.client", "ssl", "email", "p2pnode.api.schemas")


def imported_by(tmp_path: Path, *args: str) -> set[str]:
    """The modules `python -m p2pnode ARGS` has loaded when it exits."""
    listing = tmp_path / "modules.txt"
    code = (
        "import atexit, runpy, sys\n"
        f"atexit.register(lambda: open({str(listing)!r}, 'w').write('\\n'.join(sys.modules)))\n"
        f"sys.argv = ['p2pnode', *{args!r}]\n"
        "runpy.run_module('p2pnode', run_name='__main__')\n"
    )
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=False, timeout=60)
    return set(listing.read_text().split())


def project(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in ("p2pnode", "tickets")}


@pytest.mark.parametrize("args", [("--version",), ("-h",), ()])
def test_version_and_help_load_no_command(tmp_path: Path, args: tuple[str, ...]) -> None:
    loaded = imported_by(tmp_path, *args)
    assert project(loaded) == TOP
    assert sorted(m for m in (*NOT_BEFORE_A_REQUEST, "secrets") if m in loaded) == []


@pytest.mark.parametrize(
    ("args", "own"),
    [
        (("blob", "add", "--help"), {"p2pnode.cli.blob_cmds"}),
        (("blob", "add", "/no/such/file"), {"p2pnode.cli.blob_cmds"}),
        (("status", "-h"), {"p2pnode.cli.node_cmds"}),
        (("member", "rm", "-h"), {"p2pnode.cli.member_cmds"}),
    ],
)
def test_a_command_without_a_request_loads_only_its_module(
    tmp_path: Path, args: tuple[str, ...], own: set[str]
) -> None:
    loaded = imported_by(tmp_path, *args)
    assert project(loaded) == TOP | own
    assert sorted(m for m in NOT_BEFORE_A_REQUEST if m in loaded) == []


def test_the_listing_is_what_the_commands_say_and_names_every_one() -> None:
    """`p2pnode -h` lists each command by its summary in `COMMANDS` without importing it: the
    same text as once every command module is loaded, and every command the modules define."""
    code = (
        "import pkgutil, sys, click, p2pnode.cli as package\n"
        "from p2pnode.cli import COMMANDS, cli\n"
        "def listing():\n"
        "    return cli.get_help(click.Context(cli, info_name='p2pnode'))\n"
        "lazy = listing()\n"
        "assert not [m for m in sys.modules if m.endswith('_cmds')], 'help imported a command'\n"
        "for module in pkgutil.iter_modules(package.__path__):\n"
        "    __import__(f'p2pnode.cli.{module.name}')\n"
        "assert sorted(cli.commands) == sorted(COMMANDS), sorted(cli.commands)\n"
        "for name, command in cli.commands.items():\n"
        "    assert command.callback.__module__.rpartition('.')[2] in COMMANDS[name][0], name\n"
        "assert listing() == lazy, (lazy, listing())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_status_loads_the_status_models_only(tmp_path: Path) -> None:
    """Not the API's whole vocabulary (jobs, blobs, requests) for the one reply it reads."""
    loaded = imported_by(tmp_path, "--api", "127.0.0.1:1", "status")  # nothing answers there
    assert {"http.client", "p2pnode.status"} <= loaded
    assert "p2pnode.api.schemas" not in loaded


@pytest.mark.parametrize("args", [("blob", "add", __file__), ("blob", "rm", "0" * 64)])
def test_a_blob_command_loads_no_jobs_models(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Its request and reply models come from `api/blob_schemas.py`, not the whole vocabulary."""
    loaded = imported_by(tmp_path, "--api", "127.0.0.1:1", *args)  # nothing answers there
    assert {"http.client", "p2pnode.api.blob_schemas"} <= loaded
    assert (
        sorted(m for m in loaded if m.startswith("p2pnode.jobs") or m == "p2pnode.api.schemas")
        == []
    )


BLOB_ADD = {
    "p2pnode.cli.blob_cmds",
    "p2pnode.api.blob_schemas",
    "p2pnode.blobs",
    "p2pnode.blobs.model",
    "p2pnode.ids",
}
"""What `blob add` loads beyond `TOP`: its command and the models of its one request."""


def test_blob_add_loads_its_request_models_and_nothing_else(tmp_path: Path) -> None:
    """The add a person types most: no progress bar (`blob get`'s), no jobs or labels models, no
    server, store or transport code; the stdlib HTTP client and pydantic, which it needs."""
    loaded = imported_by(tmp_path, "--api", "127.0.0.1:1", "blob", "add", __file__)
    assert project(loaded) == TOP | BLOB_ADD
    assert {"http.client", "pydantic"} <= loaded
    assert sorted(m for m in loaded if m.split(".")[0] in ("rich", "trio", "iroh", "httpx")) == []


LIGHT = {
    "p2pnode.api.blob_schemas": {"p2pnode.ids", "p2pnode.blobs.model"},
    "p2pnode.jobs.submission": {"p2pnode.ids", "p2pnode.jobs.model", "p2pnode.executors.base"},
}
"""The models the CLI builds or reads, with the project's modules they may load (and packages)."""


@pytest.mark.parametrize("module", sorted(LIGHT))
def test_the_clis_models_stay_light(module: str) -> None:
    """No transport, runtime or server code: a CLI process imports these whole."""
    code = (
        f"import sys, {module}\n"
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('p2pnode', 'trio', 'iroh',"
        " 'wasmtime', 'httpx', 'fastapi', 'sqlite3')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    loaded = set(result.stdout.split())
    allowed = {module, "p2pnode.labels"} | LIGHT[module]
    assert sorted(m for m in loaded if m.split(".")[0] != "p2pnode") == []
    packages = {"p2pnode", "p2pnode.api", "p2pnode.blobs", "p2pnode.jobs", "p2pnode.executors"}
    assert sorted(loaded - allowed - packages) == []


def test_a_mistyped_command_is_matched_against_every_command() -> None:
    """Also against those whose modules were not loaded (all of them, here)."""
    result = run_cli("stauts", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: No such command 'stauts'.")
    assert "'status'" in result.stderr and result.stderr.count("\n") == 1
