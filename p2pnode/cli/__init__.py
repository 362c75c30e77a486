"""`p2pnode`: start a node, hand out tickets, inspect it. Every user mistake is one line, never a traceback."""

from __future__ import annotations

import logging
import sys
from typing import Any, NoReturn

import click

import tickets
from p2pnode.api.client import ApiClient, ApiError
from p2pnode.config import DEFAULT_API

EXIT_USAGE = 2


class UserError(click.ClickException):
    """One clear line on stderr and a non-zero exit: the way every expected failure ends."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def fail(message: str, code: int = 1) -> NoReturn:
    error = UserError(message)
    error.exit_code = code
    raise error


def parse_join_ticket(text: str) -> tickets.JoinTicket:
    try:
        return tickets.parse_join(text)
    except tickets.TicketError as exc:
        fail(f"invalid join ticket: {exc}", EXIT_USAGE)


def parse_blob_ticket(text: str) -> tickets.BlobTicket:
    try:
        return tickets.parse_blob(text)
    except tickets.TicketError as exc:
        fail(f"invalid blob ticket: {exc}", EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--api",
    envvar="P2PNODE_API",
    default=DEFAULT_API,
    show_default=True,
    help="Local API of the running node that commands talk to (env P2PNODE_API).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what the command does on stderr.")
@click.pass_context
def cli(ctx: click.Context, api: str, verbose: bool) -> None:
    """A peer-to-peer compute node.

    \b
    Start a node:              p2pnode start
    Join it from another one:  p2pnode start --data other --http-port 3021 --join <ticket>
    Inspect the cluster:       p2pnode status
    Print a fresh ticket:      p2pnode ticket
    Share a file:              p2pnode blob add FILE
    Fetch it anywhere:         p2pnode blob get <blob ticket> -o FILE
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ctx.obj = ApiClient(api)


from p2pnode.cli import blob_cmds, job_cmds, member_cmds, node_cmds  # noqa: E402, F401  (commands register on `cli`)


def main() -> None:
    try:
        cli.main(prog_name="p2pnode", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ApiError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
