"""`p2pnode member ls | rm ID`: who is in this node's cluster, and removing one for good."""

from __future__ import annotations

import time

import click

from p2pnode.api.client import ApiClient
from p2pnode.cli import EXIT_USAGE, cli, fail


@cli.group()
def member() -> None:
    """List or remove this node's cluster members.

    \b
    Examples:
      p2pnode member ls
      p2pnode member rm f41092dc7c6dcf8fcfc1cd82d677a4fb336ff6d4b31ea42829b4383de1510365
    """


@member.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_members(api: ApiClient, as_json: bool) -> None:
    """Members and their state: connected, idle or down.

    Idle: no connection was needed lately; down: unreachable, redialled with back-off.

    \b
    Example:
      p2pnode member ls --json
    """
    from pydantic import RootModel

    from p2pnode.api.schemas import MemberStatus

    members = api.get("/members", RootModel[list[MemberStatus]])
    if as_json:
        click.echo(members.model_dump_json(indent=2))
        return
    now = time.time()
    for m in members.root:
        click.echo(
            f"{m.id}  {m.state:9}  seen {_ago(now - m.last_seen):>8}  "
            f"{', '.join(m.addresses) or m.relay_url or '-'}"
        )


@member.command("rm")
@click.argument("node_id", metavar="ID")
@click.pass_obj
def remove_member(api: ApiClient, node_id: str) -> None:
    """Remove member ID and refuse it from now on.

    ID is the 64 hex digits `member ls` shows.

    \b
    Example:
      p2pnode member rm f41092dc7c6dcf8fcfc1cd82d677a4fb336ff6d4b31ea42829b4383de1510365
    """
    from p2pnode.api.schemas import Done
    from p2pnode.ids import parse_node_id

    try:
        member_id = parse_node_id(node_id)
    except ValueError:
        fail(
            f"invalid member id {node_id!r}: expected the 64 hex digits `p2pnode member ls` shows",
            EXIT_USAGE,
        )
    api.delete(f"/members/{member_id}", Done)
    click.echo(f"removed {member_id}")
    click.echo(
        "this node now refuses it (connections and join handshakes, also after a restart); "
        "other members still accept it until it is removed on each of them, and a node holding "
        "the cluster's join ticket can still join under a new id",
        err=True,
    )


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"
