"""`p2pnode job logs`: a job's stdout and stderr, live while it runs, whole once it ended."""

from __future__ import annotations

import click

from p2pnode.api.client import ApiClient
from p2pnode.api.schemas import LogEvent
from p2pnode.cli.job_cmds import job
from p2pnode.cli.terminal import echo_output


@job.command()
@click.argument("job_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends.")
@click.option("--stdout", "stream", flag_value="stdout", help="Only the job's stdout.")
@click.option("--stderr", "stream", flag_value="stderr", help="Only the job's stderr.")
@click.pass_obj
def logs(api: ApiClient, job_id: str, follow: bool, stream: str | None) -> None:
    """Show a job's output, from its origin: while it runs, what it wrote lately (and with
    --follow what it writes until it ends); once it ended, all of it.

    The job's stdout goes to stdout and its stderr to stderr; with --stdout or --stderr the one
    stream goes to stdout. Notes from the node go to stderr, marked [p2pnode].

    \b
    Example:
      p2pnode job logs job_01M8CRH8D5H83H6EVKWEVXEHTJ --follow
    """
    params: dict[str, str | bool] = {"follow": follow}
    if stream is not None:
        params["stream"] = stream
    for event in api.stream("GET", f"/jobs/{job_id}/logs", LogEvent, params=params):
        if event.note is not None:
            echo_output(f"[p2pnode] {event.note}", err=True)
        if event.stream is not None:
            echo_output(event.text, nl=False, err=stream is None and event.stream == "stderr")
