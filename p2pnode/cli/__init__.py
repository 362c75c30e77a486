"""`p2pnode`: start a node, hand out tickets, inspect it. Every user mistake is one line, never a
traceback.

Imports stay light: a command that talks to a running node loads click, the stdlib HTTP client and
the API's pydantic schemas, never the node, the transport (iroh, trio) or the progress bar (rich);
commands import those where they need them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn

import click

from p2pnode import DEFAULT_DATA, __version__
from p2pnode.api.auth import token_path
from p2pnode.api.client import ApiClient, ApiError

if TYPE_CHECKING:
    import tickets
    from p2pnode.config import Settings

EXIT_USAGE: Final = 2
DEFAULT_API = "http://127.0.0.1:3020"


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
    group_class = type  # subgroups are of this class too


@click.group(
    cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
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


# The commands register on `cli` when imported.
from p2pnode.cli import (  # noqa: E402, F401
    blob_cmds,
    dashboard_cmds,
    job_cmds,
    log_cmds,
    member_cmds,
    node_cmds,
    worker_cmds,
)


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
