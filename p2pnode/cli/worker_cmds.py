"""`p2pnode workers`: every node of the cluster as a worker, from the heartbeats it gossips."""

from __future__ import annotations

import click
from pydantic import RootModel

from p2pnode.api.client import ApiClient
from p2pnode.cli import cli
from p2pnode.jobs.heartbeat import WorkerView


class _WorkerList(RootModel[list[WorkerView]]):
    pass


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def workers(api: ApiClient, as_json: bool) -> None:
    """Every worker of the cluster, this node included: state, load and executors.

    States: ready; busy (no free slot); down (3 heartbeats of 3 s missed). Executors marked
    `!` are installed but do not answer.

    \b
    Example:
      p2pnode workers --json
    """
    found = api.get("/workers", _WorkerList)
    if as_json:
        click.echo(found.model_dump_json(indent=2))
        return
    for w in found.root:
        executors = ",".join(e.kind if e.answers else f"!{e.kind}" for e in w.executors)
        click.echo(
            f"{w.node_id}  {w.state:5}  slots {w.slots_total - w.slots_free}/{w.slots_total}  "
            f"{executors or '-':16}  seen {w.age_s:.0f}s ago  v{w.version}"
        )
