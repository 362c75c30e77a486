"""`p2pnode blob ...`: share files as blobs and fetch them by ticket."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import blake3
import click
import trio
from pydantic import RootModel

import tickets
from p2pnode.api.schemas import BlobAdded, Done, FetchEvent
from p2pnode.api.client import ApiClient
from p2pnode.blobs.model import BlobInfo, GcResult
from p2pnode.cli import EXIT_USAGE, cli, fail, parse_blob_ticket
from p2pnode.cli.progress import TransferProgress
from p2pnode.fsutil import NotRegularFile, open_regular


UPLOAD_CHUNK = 1 << 20


class _BlobList(RootModel[list[BlobInfo]]):
    pass


@cli.group()
def blob() -> None:
    """Content-addressed blobs: add files, fetch them by ticket, manage the store."""


@blob.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def add(api: ApiClient, path: Path) -> None:
    """Upload a file to the running node's store (pinned); prints its BLAKE3 hash and a blob ticket."""
    added = upload(api, path)
    click.echo(f"hash:   {added.blob.hash}")
    click.echo(f"size:   {added.blob.size}")
    click.echo(f"ticket: {added.ticket}")


def upload(api: ApiClient, path: Path) -> BlobAdded:
    """Stream a regular file's content to the node, which never opens the path itself."""
    try:
        f = open_regular(path)
    except NotRegularFile as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", EXIT_USAGE)
    with f:
        size = os.fstat(f.fileno()).st_size
        return api.upload("/blobs", iter(lambda: f.read(UPLOAD_CHUNK), b""), size, BlobAdded, params={"pin": True}, timeout=None)


def download(api: ApiClient, blob_hash: str, dest: Path, *, force: bool) -> None:
    """Write a blob from the node's store to `dest` through a temp file beside it, checking its hash;
    an existing `dest` is replaced only with `force`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        hasher = blake3.blake3()
        with open(tmp, "xb") as f:
            for chunk in api.download(f"/blobs/{blob_hash}"):
                hasher.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if hasher.hexdigest() != blob_hash:
            fail(f"the node sent content that does not hash to {blob_hash}; nothing was written")
        if force:
            os.replace(tmp, dest)
        else:
            try:
                os.link(tmp, dest)  # never clobbers: fails if dest appeared meanwhile
            except FileExistsError:
                fail(f"{dest} exists (pass --force to overwrite it)", EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot write {dest}: {exc.strerror}")
    finally:
        tmp.unlink(missing_ok=True)


@blob.command()
@click.argument("ticket")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True, path_type=Path), help="Where to write the blob.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.pass_obj
def get(api: ApiClient, ticket: str, output: Path, force: bool) -> None:
    """Fetch a blob by ticket, verified, into OUTPUT.

    Uses the running node when there is one (the blob then stays in its store);
    otherwise a short-lived endpoint fetches into the store at IROH_BLOBS_PATH.
    An interrupted fetch resumes where it stopped.
    """
    parsed = parse_blob_ticket(ticket)
    output = output.absolute()
    if not output.parent.is_dir():
        fail(f"cannot write {output}: folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        fail(f"cannot write {output}: permission denied")
    if not force and os.path.lexists(output):
        fail(f"{output} exists (pass --force to overwrite it)", EXIT_USAGE)
    with TransferProgress(f"blob {parsed.hash_hex[:12]}", parsed.size) as progress:
        if api.reachable():
            info = _fetch_via_node(api, ticket, progress)
            download(api, info.hash, output, force=force)
        else:
            click.echo(f"no node at {api.base_url}: fetching with a short-lived endpoint", err=True)
            info = trio.run(_fetch_standalone, parsed, output, progress)
    click.echo(f"{info.hash}  {info.size} bytes  -> {output}")


def _fetch_via_node(api: ApiClient, ticket: str, progress: TransferProgress) -> BlobInfo:
    for event in api.stream("POST", "/blobs/fetch", FetchEvent, json={"ticket": ticket}):
        if event.progress is not None:
            progress.update(event.progress.bytes_done)
        elif event.error is not None:
            fail(event.error)
        elif event.blob is not None:
            progress.update(event.blob.size)
            return event.blob
    fail("the node ended the fetch without a result")


async def _fetch_standalone(ticket: tickets.BlobTicket, output: Path, progress: TransferProgress) -> BlobInfo:
    import iroh

    from p2pnode.blobs.fetch import FetchError, fetch_blob
    from p2pnode.blobs.protocol import BLOBS_ALPN
    from p2pnode.blobs.store import BlobStore, StoreError
    from p2pnode.config import Settings
    from p2pnode.membership import PeerAddr
    from p2pnode.net.dialer import Dialer
    from p2pnode.net.endpoint import bind_endpoint, close_endpoint

    settings = Settings()
    try:
        store = await BlobStore.open(settings.blobs_dir)
    except (StoreError, OSError) as exc:
        fail(f"cannot open the blob store at {settings.blobs_dir}: {exc}")
    endpoint = await bind_endpoint(iroh.SecretKey.generate(), settings.bind, settings.relay, [BLOBS_ALPN])
    dialer = Dialer(endpoint, connect_timeout_s=settings.connect_timeout_s)  # not a member: tickets only
    try:
        info = await fetch_blob(
            store,
            lambda addr: dialer.connect(addr, BLOBS_ALPN),
            ticket.hash_hex,
            [PeerAddr.from_ticket(ticket.provider)],
            root=ticket.root_hex,
            size=ticket.size,
            capability=ticket.capability.hex(),
            on_progress=lambda p: progress.update(p.bytes_done),
        )
        return await store.export(info.hash, output)
    except (FetchError, StoreError) as exc:
        fail(str(exc))
    finally:
        dialer.close_all()
        await close_endpoint(endpoint)
        store.close()


@blob.command(name="ls")
@click.pass_obj
def list_blobs(api: ApiClient) -> None:
    """List the blobs in the running node's store."""
    for info in api.request("GET", "/blobs", _BlobList).root:
        flags = ",".join(["pinned"] * info.pinned + list(info.tags)) or "-"
        click.echo(f"{info.hash}  {info.size:>12}  {flags}")


@blob.command(name="rm")
@click.argument("blob_hash", metavar="HASH")
@click.option("--force", is_flag=True, help="Delete even if pinned or tagged.")
@click.pass_obj
def remove(api: ApiClient, blob_hash: str, force: bool) -> None:
    """Delete a blob (refused while it is pinned, tagged or in use, unless --force)."""
    api.delete(f"/blobs/{blob_hash}", Done, params={"force": force})


@blob.command()
@click.pass_obj
def gc(api: ApiClient) -> None:
    """Remove unpinned, untagged blobs that no live job needs."""
    result = api.post("/blobs/gc", GcResult)
    click.echo(f"removed {len(result.removed)} blobs and {len(result.removed_partials)} partial downloads, {result.freed_bytes} bytes")


@blob.command()
@click.argument("blob_hash", metavar="HASH")
@click.pass_obj
def pin(api: ApiClient, blob_hash: str) -> None:
    """Keep a blob from garbage collection."""
    api.post(f"/blobs/{blob_hash}/pin", Done)


@blob.command()
@click.argument("blob_hash", metavar="HASH")
@click.pass_obj
def unpin(api: ApiClient, blob_hash: str) -> None:
    """Let garbage collection remove a blob once nothing uses it."""
    api.delete(f"/blobs/{blob_hash}/pin", Done)
