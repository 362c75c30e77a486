"""`p2pnode dashboard`: a one-time link that logs a browser in to the node's web dashboard.

The link carries a short-lived code, never the API token, in its fragment (`#code=...`), which no
request carries: the login page's script trades it for a session and drops it from the address
bar, and a copy left anywhere is spent within a minute.

`--open` never hands the link to the browser on its command line, which every local account can
read in /proc while the browser starts (and redeem the code first): the browser opens a private
local file that leads to the link.
"""

from __future__ import annotations

import html
import os
import tempfile
import urllib.parse
import webbrowser
from pathlib import Path

import click

from p2pnode.api.client import ApiClient
from p2pnode.api.schemas import LoginCode
from p2pnode.cli import cli
from p2pnode.fsutil import create_once


@cli.command()
@click.option("--open", "open_browser", is_flag=True, help="Open the link in the web browser.")
@click.pass_obj
def dashboard(api: ApiClient, open_browser: bool) -> None:
    """Print a link that logs a browser in to this node's dashboard (good once, for a minute).

    The dashboard shows the members, the workers and their load, the jobs live, each job's
    history, logs and outputs, the blob store and the join ticket. Without the link, open
    /login and paste the API token.

    \b
    Example:
      p2pnode dashboard --open
    """
    login = api.post("/login-codes", LoginCode)
    url = f"{api.base_url}/login#{urllib.parse.urlencode({'code': login.code})}"
    click.echo(url)
    click.echo(f"(logs in once, within {login.expires_in:.0f} s)", err=True)
    if open_browser and not webbrowser.open(_private_page(url).as_uri()):
        click.echo("no web browser found here: open the link yourself", err=True)


def _private_page(url: str) -> Path:
    """A page only this user can read (0600 in a fresh 0700 folder) that leads to `url`."""
    folder = Path(
        tempfile.mkdtemp(prefix="p2pnode-dashboard-", dir=os.environ.get("XDG_RUNTIME_DIR"))
    )
    page = folder / "login.html"
    link = html.escape(url)
    create_once(
        page,
        f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url={link}">'
        f'<a href="{link}">Log in to the p2pnode dashboard</a>\n'.encode(),
    )
    return page
