"""`p2pnode`: start a node, hand out tickets, inspect it. Every user mistake is one line, never a
traceback.

Imports stay light, since every command pays them before it does anything: `p2pnode --version` and
`-h` load click and this package only; a command's module is imported when that command runs (see
`COMMANDS`), and loads the stdlib HTTP client and the API's pydantic schemas when it makes a
request, never the node, the transport (iroh, trio) or the progress bar (rich) unless it needs them.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import click

from p2pnode import DEFAULT_DATA, __version__
from p2pnode.api.client import EXIT_USAGE as EXIT_USAGE  # re-exported: the commands use it
from p2pnode.api.client import ApiClient, ApiError
from p2pnode.apitoken import token_path

if TYPE_CHECKING:
    import tickets
    from p2pnode.config import Settings

DEFAULT_API = "http://127.0.0.1:3020"

COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    # name: (the modules of p2pnode.cli that define it, its summary in `p2pnode -h`: the first
    # paragraph of its help, which tests/test_cli_startup.py checks)
    "blob": (("blob_cmds",), "Share files as blobs and fetch them by ticket."),
    "dashboard": (
        ("dashboard_cmds",),
        "Print a link that logs a browser in to this node's dashboard (good once, for a minute).",
    ),
    "drain": (
        ("worker_cmds",),
        "Stop claiming jobs here, letting the running ones finish (maintenance).",
    ),
    "job": (
        ("job_cmds", "log_cmds"),
        "WebAssembly jobs: submit, list, show, wait, cancel, fetch outputs.",
    ),
    "member": (("member_cmds",), "List or remove this node's cluster members."),
    "start": (("node_cmds",), "Run a node in the foreground until Ctrl-C."),
    "status": (("node_cmds",), "Show this node and its cluster's members."),
    "ticket": (("node_cmds",), "Print a fresh join ticket of the running node."),
    "undrain": (
        ("worker_cmds",),
        "Claim jobs here again, starting with the ones announced while drained.",
    ),
    "workers": (
        ("worker_cmds",),
        "Every worker of the cluster, this node included: state, load, executors and labels.",
    ),
}
"""Every command: its modules register it on `cli` when imported, which happens only when it
runs or shows its own help (they import pydantic, the API's schemas and more)."""


class UserError(click.ClickException):
    """One clear line on stderr and a non-zero exit: the way every expected failure ends."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class BadInput(UserError):
    """A `UserError` caused by what was typed: exit 2, like click's own usage errors."""

    exit_code = EXIT_USAGE


def fail(message: str, code: Literal[1, 2] = 1) -> NoReturn:
    """Raise the `UserError` that exits with `code` (click reads the exit code from the class)."""
    raise (BadInput if code == EXIT_USAGE else UserError)(message)


def parse_join_ticket(text: str) -> tickets.JoinTicket:
    import tickets

    try:
        return tickets.parse_join(text)
    except tickets.TicketError as exc:
        fail(f"invalid join ticket: {exc}", EXIT_USAGE)


def parse_blob_ticket(text: str) -> tickets.BlobTicket:
    import tickets

    try:
        return tickets.parse_blob(text)
    except tickets.TicketError as exc:
        fail(f"invalid blob ticket: {exc}", EXIT_USAGE)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and the flags; a bad value is one line naming its variable."""
    from pydantic import ValidationError

    from p2pnode.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = [
            f"{_setting_name(Settings, str(e['loc'][0]))}={e['input']!r}: {e['msg']}"
            for e in exc.errors()
        ]
        fail("invalid setting " + "; ".join(problems), EXIT_USAGE)


def _setting_name(settings: type[Settings], field: str) -> str:
    """The environment variable a field reads (the upper-case alias), which is what a person set."""
    alias = settings.model_fields[field].validation_alias
    choices = getattr(alias, "choices", ())
    return next((c for c in choices if isinstance(c, str) and c.isupper()), field)


def _verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        logging.getLogger().setLevel(logging.INFO)


class _Verbose:
    """Adds `-v` to every command and group, so it works before or after the subcommand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(  # type: ignore[attr-defined]
            click.Option(
                ["-v", "--verbose"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=_verbose,
                help="Log what the command does on stderr.",
            )
        )


class Command(_Verbose, click.Command):
    pass


class Group(_Verbose, click.Group):
    command_class = Command
    group_class: type[click.Group | type] | None = type  # subgroups are of this class too


class _LazyGroup(Group):
    """The top group: knows its commands by `COMMANDS`, imports one's modules when it is used
    (click's lazy-loading pattern) and lists them all in its help without importing any."""

    group_class = Group

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            for module in COMMANDS[cmd_name][0]:
                importlib.import_module(f"{__name__}.{module}")
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:  # suggest from all, not just the loaded
            raise click.exceptions.NoSuchCommand(
                exc.command_name, possibilities=self.list_commands(ctx), ctx=ctx
            ) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click lists them, each by its summary in `COMMANDS` unless it is loaded already."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = []
        for name in names:
            command = self.commands.get(name) or Command(name, help=COMMANDS[name][1])
            rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--api",
    envvar="P2PNODE_API",
    default=DEFAULT_API,
    show_default=True,
    help="Local API of the running node that commands talk to; the scheme may be left out "
    "(env P2PNODE_API).",
)
@click.option(
    "--api-token",
    envvar="P2PNODE_API_TOKEN",
    help="Token of that node's API (env P2PNODE_API_TOKEN; default: read from DATA/api-token).",
)
@click.option(
    "--data",
    "data_dir",
    envvar="P2PNODE_DATA",
    default=DEFAULT_DATA,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Data folder of the node: where its API token is read (env P2PNODE_DATA).",
)
@click.version_option(
    __version__, "-V", "--version", prog_name="p2pnode", message="%(prog)s %(version)s"
)
@click.pass_context
def cli(ctx: click.Context, api: str, api_token: str | None, data_dir: Path) -> None:
    """A peer-to-peer compute node.

    \b
    Start a node:              p2pnode start
    Join it from another one:  p2pnode start --data other --http-port 3021 --join <ticket>
    Inspect the cluster:       p2pnode status
    Print a fresh ticket:      p2pnode ticket
    Share a file:              p2pnode blob add FILE
    Fetch it anywhere:         p2pnode blob get <blob ticket> -o FILE
    Run a job:                 p2pnode job submit --module examples/wordcount.wat \\
                                 --artifact text=README.md --wait

    Add -v to any command to see what it does.
    """
    ctx.obj = ApiClient(api, token=api_token, token_file=token_path(data_dir))


def main() -> None:
    logging.basicConfig(
        level=logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cli.main(prog_name="p2pnode", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # `p2pnode`, `p2pnode blob`: the help is the answer
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} -h`)" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ApiError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
