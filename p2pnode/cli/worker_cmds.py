"""`p2pnode workers | drain | undrain`: every node of the cluster as a worker, from the
heartbeats it gossips, and this node's drain switch."""

from __future__ import annotations

import time
from typing import get_args

import click

from p2pnode.api.client import ApiClient
from p2pnode.cli import cli, fail

DRAIN_POLL_S = 30.0
"""How long one `POST /drain` waits for the running jobs before the CLI asks again."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def workers(api: ApiClient, as_json: bool) -> None:
    """Every worker of the cluster, this node included: state, load, executors and labels.

    States: ready; busy (no free slot); draining (claims no new job); down (3 heartbeats of
    3 s missed). Executors marked `!` are installed but do not answer; a version marked `*`
    is not this node's (an upgrade is under way).

    \b
    Example:
      p2pnode workers --json
    """
    from pydantic import RootModel

    from p2pnode.jobs.heartbeat import WorkerState, WorkerView
    from p2pnode.labels import format_labels

    state_width = max(len(state) for state in get_args(WorkerState))
    found = api.get("/workers", RootModel[list[WorkerView]])
    if as_json:
        click.echo(found.model_dump_json(indent=2))
        return
    for w in found.root:
        executors = ",".join(e.kind if e.answers else f"!{e.kind}" for e in w.executors)
        slots = f"{w.slots_total - w.slots_free}/{w.slots_total}"
        version = f"v{w.version}{'*' if w.other_version else ''}"
        click.echo(
            f"{w.node_id}  {w.state:{state_width}}  slots {slots}  "
            f"{executors or '-':16}  seen {w.age_s:.0f}s ago  {version}  "
            f"{format_labels(w.labels)}"
        )
    if others := sum(w.other_version for w in found.root):
        click.echo(
            f"* {others} of {len(found.root)} nodes run another version of p2pnode than this "
            "one; see README 'Upgrades and compatibility'",
            err=True,
        )


@cli.command()
@click.option("--wait", is_flag=True, help="Return only once no job runs here any more.")
@click.option(
    "--release",
    is_flag=True,
    help="Hand the running jobs back to their origins now, for other workers to run.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="With --wait: give up (exit 1) after this long.",
)
@click.pass_obj
def drain(api: ApiClient, wait: bool, release: bool, timeout: float | None) -> None:
    """Stop claiming jobs here, letting the running ones finish (maintenance).

    With --release the running jobs stop at once and go back to their origins, which
    offer them again (the attempt is not counted).

    The node stays drained across restarts until `p2pnode undrain`; every member's
    `p2pnode workers` shows it as draining.

    \b
    Example:
      p2pnode drain --wait && systemctl reboot
      p2pnode drain --release --wait
    """
    from p2pnode.api.schemas import DrainStatus

    deadline = None if timeout is None else time.monotonic() + timeout
    state = api.post("/drain", DrainStatus, params={"release": release})
    while wait and state.running:
        left = DRAIN_POLL_S if deadline is None else deadline - time.monotonic()
        if left <= 0:
            fail(f"still running after {timeout:g} s: {' '.join(state.running)}")
        poll = min(left, DRAIN_POLL_S)
        state = api.post("/drain", DrainStatus, params={"timeout": poll}, timeout=poll + 10)
    if state.running:
        click.echo(f"draining; still running: {' '.join(state.running)}")
    else:
        click.echo("drained: no job runs here")


@cli.command()
@click.pass_obj
def undrain(api: ApiClient) -> None:
    """Claim jobs here again, starting with the ones announced while drained.

    \b
    Example:
      p2pnode undrain
    """
    from p2pnode.api.schemas import DrainStatus

    api.post("/undrain", DrainStatus)
    click.echo("undrained: claiming jobs")
