"""`p2pnode start | ticket | status`: run a node and look at it."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from p2pnode.api.client import ApiClient
from p2pnode.cli import EXIT_USAGE, cli, fail, load_settings, parse_join_ticket

if TYPE_CHECKING:
    import tickets


@cli.command()
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data folder (env P2PNODE_DATA, default ./data).",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    help="Port of the local API on 127.0.0.1 (env HTTP_PORT, default 3020; 0 picks a free one).",
)
@click.option(
    "--bind", help="UDP address for the iroh endpoint (env P2PNODE_BIND, default 0.0.0.0:0)."
)
@click.option(
    "--relay",
    help="Relay servers: default, disabled, or a relay URL (env P2PNODE_RELAY, default: default).",
)
@click.option(
    "--join",
    "join_ticket",
    metavar="TICKET",
    envvar="P2PNODE_JOIN",
    help="Join the cluster of the node that printed this ticket; - reads it from stdin (env "
    "P2PNODE_JOIN). Stdin or the variable keep it, and the cluster's secret in it, off the "
    "command line, which every local account can read while the node runs.",
)
@click.option(
    "--max-jobs",
    type=click.IntRange(min=0),
    help="Jobs this node runs at once; 0 makes it submit-only (env P2PNODE_MAX_JOBS, default 2).",
)
@click.option(
    "--max-job-memory",
    "max_job_memory_mib",
    type=click.IntRange(min=1),
    metavar="MIB",
    help="Most memory any job gets here, in MiB (env P2PNODE_MAX_JOB_MEMORY_MIB, default 1024).",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label jobs can --require (repeatable; env P2PNODE_LABELS=k=v,k2=v2).",
)
def start(
    data_dir: Path | None,
    http_port: int | None,
    bind: str | None,
    relay: str | None,
    join_ticket: str | None,
    max_jobs: int | None,
    max_job_memory_mib: int | None,
    labels: tuple[str, ...],
) -> None:
    """Run a node in the foreground until Ctrl-C.

    Prints the node id, its API and a join ticket; writes the id and API URL to
    DATA/node.json and the API token to DATA/api-token (mode 0600). A node started
    with --join remembers its cluster: restart it without the ticket and it rejoins.

    \b
    Examples:
      p2pnode start
      p2pnode start --data worker --http-port 3021 --join p2pjoin...
      p2pnode start --data worker --http-port 3021 --join - < ticket.txt
      p2pnode start --label gpu=yes --label zone=eu
    """
    import trio

    from p2pnode.api.app import serve_node_api
    from p2pnode.api.server import ApiBindError
    from p2pnode.concurrency import collapse_groups
    from p2pnode.node import Node, StartupError

    from_stdin = join_ticket == "-"
    if from_stdin:
        join_ticket = sys.stdin.read()
    ticket = parse_join_ticket(join_ticket) if join_ticket else None
    source = click.get_current_context().get_parameter_source("join_ticket")
    exposed = ticket is not None and not from_stdin and source == ParameterSource.COMMANDLINE
    data_dir = (
        data_dir or click.get_current_context().find_root().params["data_dir"]
    )  # `p2pnode --data DIR start`
    settings = load_settings(
        data_dir=data_dir,
        http_port=http_port,
        bind=bind,
        relay=relay,
        max_jobs=max_jobs,
        max_job_memory_mib=max_job_memory_mib,
        labels=_parse_labels(labels) if labels else None,
    )
    logging.getLogger().setLevel(logging.INFO)  # a running node reports what it does
    # ...but not each request of its Flawless client (a probe every 30 s): the executor registry
    # says when Flawless comes or goes, and a failed call fails its job with the reason.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        with collapse_groups():
            trio.run(_run_node, Node(settings, serve_node_api), ticket, exposed)
    except (StartupError, ApiBindError) as exc:
        fail(str(exc))


def _parse_labels(items: tuple[str, ...]) -> dict[str, str]:
    from p2pnode.labels import parse_labels

    try:
        return parse_labels(items)
    except ValueError as exc:
        fail(f"--label: {exc}", EXIT_USAGE)


async def _run_node(node: Any, ticket: tickets.JoinTicket | None, exposed: bool) -> None:
    """Runs `node` until SIGINT or SIGTERM; `exposed`: its join ticket came on the command
    line."""
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(
                lambda task_status: node.run(join_ticket=ticket, task_status=task_status)
            )
            click.echo(f"node id:     {info.id}")
            click.echo(f"local API:   {info.api_url}")
            click.echo(f"join ticket: {node.join_ticket()}")
            click.echo(
                f"(written to {node.settings.data_dir / 'node.json'}; Ctrl-C stops the node)",
                err=True,
            )
            if exposed:
                click.echo(
                    "note: the join ticket is on this node's command line, where every local "
                    "account can read it while the node runs; --join - (stdin) or P2PNODE_JOIN "
                    "keep it off",
                    err=True,
                )
            sys.stdout.flush()
            async for signum in signals:
                logging.getLogger("p2pnode").info(
                    "%s received, shutting down", signal.Signals(signum).name
                )
                nursery.cancel_scope.cancel()
                break


@cli.command()
@click.pass_obj
def ticket(api: ApiClient) -> None:
    """Print a fresh join ticket of the running node.

    \b
    Examples:
      p2pnode ticket
      p2pnode --api 127.0.0.1:3021 --data worker ticket
    """
    from p2pnode.api.schemas import JoinTicketReply

    click.echo(api.post("/tickets/join", JoinTicketReply).ticket)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(api: ApiClient, as_json: bool) -> None:
    """Show this node and its cluster's members.

    The node's id, addresses and relay; each member and its state (connected, idle,
    or down: unreachable, redialled with back-off);
    gossip and job counters; the blob store's size and the free disk under it.

    \b
    Examples:
      p2pnode status
      p2pnode status --json
    """
    from p2pnode.labels import format_labels
    from p2pnode.status import NodeStatus  # not through api.schemas, which loads far more

    st = api.get("/status", NodeStatus)
    if as_json:
        click.echo(st.model_dump_json(indent=2))
        return
    click.echo(f"node      {st.id}")
    click.echo(f"cluster   {st.cluster_id}")
    click.echo(f"addresses {', '.join(st.addresses) or '-'}   relay {st.relay_url or 'disabled'}")
    click.echo(f"members   {len(st.members)}")
    for m in st.members:
        click.echo(f"  {m.id[:16]}  {m.state:9} {', '.join(m.addresses) or m.relay_url or '-'}")
    if g := st.gossip:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(g.dropped.items()) if v) or "none"
        click.echo(
            f"gossip    neighbors {len(g.active)} (+{g.pending} dialling), "
            f"passive {g.passive}, live {g.live}; sent {g.sent}, received {g.received}, "
            f"delivered {g.delivered}, duplicates {g.duplicates}; dropped {dropped}"
        )
    j = st.jobs
    click.echo(
        f"jobs      executors {', '.join(j.executors)}; running {len(j.running)} of {j.max_jobs}; "
        f"executed {j.executed} (succeeded {j.succeeded}, failed {j.failed})"
    )
    if j.labels:
        click.echo(f"labels    {format_labels(j.labels)}")
    if j.draining:
        click.echo("draining  claims no new job, also after a restart (`p2pnode undrain`)")
    if d := st.disk:
        click.echo(
            f"store     {d.store_blobs} blobs, {d.store_bytes / 1e6:.1f} MB; "
            f"disk {d.free_bytes / 1e9:.1f} GB free of {d.total_bytes / 1e9:.1f} GB"
        )
