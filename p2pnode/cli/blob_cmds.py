"""`p2pnode blob ...`: share files as blobs and fetch them by ticket.

The API's models (and the progress bar) are imported by the command that uses them, so that
`blob ... -h` and a usage error cost no pydantic, and from `api/blob_schemas.py`, so that no
blob command loads the jobs models.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from p2pnode.api.client import ApiClient, ApiError
from p2pnode.cli import EXIT_USAGE, cli, fail, load_settings, parse_blob_ticket
from p2pnode.fsutil import FileReplaced, NotRegularFile, open_real

if TYPE_CHECKING:
    import iroh

    import tickets
    from p2pnode.api.blob_schemas import BlobAdded
    from p2pnode.blobs.model import BlobInfo
    from p2pnode.blobs.store import BlobStore
    from p2pnode.cli.progress import TransferProgress
    from p2pnode.config import Settings
    from p2pnode.net.addr import PeerAddr

log = logging.getLogger(__name__)

UPLOAD_CHUNK = 1 << 20


@cli.group()
def blob() -> None:
    """Share files as blobs and fetch them by ticket.

    Blobs are named by the BLAKE3 hash of their content and verified block by
    block when fetched. A node keeps pinned and tagged blobs; gc removes the rest.

    \b
    Examples:
      p2pnode blob add big.iso                       prints its hash and a blob ticket
      p2pnode blob get p2pblob... -o big.iso         fetches it anywhere, verified
      p2pnode blob ls
      p2pnode blob pin HASH; p2pnode blob unpin HASH; p2pnode blob rm HASH; p2pnode blob gc
    """


@blob.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option(
    "--in-place",
    is_flag=True,
    help="Do not copy: the node (on this machine) serves the file from where it is, verifying "
    "every block it reads; if the file changes, the blob goes missing.",
)
@click.pass_obj
def add(api: ApiClient, path: Path, in_place: bool) -> None:
    """Add a file to the running node's store (pinned); prints its BLAKE3 hash and a blob ticket.

    A node on this machine that can read the file reads it itself; else the file is uploaded.

    \b
    Examples:
      p2pnode blob add big.iso
      p2pnode blob add --in-place big.iso    no copy; keep the file as it is while shared
    """
    added = add_in_place(api, path) if in_place else upload(api, path)
    click.echo(f"hash:   {added.blob.hash}")
    click.echo(f"size:   {added.blob.size}")
    click.echo(f"ticket: {added.ticket}")


def _open_shareable(path: Path) -> tuple[BinaryIO, Path]:
    """A regular file from outside the node's data folder (its key, cluster secret and API
    token would become a blob any ticket holder or job could read), and where it is: checked
    on the file opened, not on a path that could name another file by then (`open_real`)."""
    try:
        f, real = open_real(path)
    except (NotRegularFile, FileReplaced) as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", EXIT_USAGE)
    data_dir = Path(click.get_current_context().find_root().params["data_dir"]).resolve()
    if real.is_relative_to(data_dir):
        f.close()
        fail(
            f"refusing to share {path}: it is inside the node's data folder {data_dir}", EXIT_USAGE
        )
    return f, real


def add_in_place(api: ApiClient, path: Path) -> BlobAdded:
    """Have the node hash the file where it is and serve it from there (no copy, no upload)."""
    from p2pnode.api.blob_schemas import BlobAdded, PathRequest
    from p2pnode.blobs.model import FileIdentity

    f, real = _open_shareable(path)
    with f:
        body = PathRequest(
            path=real,
            pin=True,
            in_place=True,
            expect=FileIdentity.of(os.fstat(f.fileno())),
        )
        try:
            return api.post("/blobs", BlobAdded, json=body.model_dump(mode="json"), timeout=None)
        except ApiError as exc:
            if exc.status != HTTPStatus.PRECONDITION_FAILED:
                raise
            fail(f"{exc}; --in-place needs a node on this machine that can read the file")


def upload(api: ApiClient, path: Path, *, pin: bool = True) -> BlobAdded:
    """Add a regular file to the node's store. A node that can open the path and finds there the
    very file this process opened (device, inode, size, mtime) reads it itself, at disk speed;
    else (it runs in another container or as another user, or the file was replaced) the content
    is streamed to it over HTTP. A job's files go unpinned (`pin=False`): the job holds them,
    and removing it frees them."""
    from p2pnode.api.blob_schemas import BlobAdded, PathRequest
    from p2pnode.blobs.model import FileIdentity

    f, real = _open_shareable(path)
    with f:
        st = os.fstat(f.fileno())
        body = PathRequest(path=real, pin=pin, expect=FileIdentity.of(st))
        try:
            added = api.post("/blobs", BlobAdded, json=body.model_dump(mode="json"), timeout=None)
        except ApiError as exc:
            # 422: a node still running the previous version knows no `expect` (just upgraded).
            if exc.status not in (HTTPStatus.PRECONDITION_FAILED, HTTPStatus.UNPROCESSABLE_ENTITY):
                raise
            log.info("the node cannot read %s itself (%s); uploading it", path, exc)
        else:
            log.info("the node read %s itself", path)
            return added
        return api.upload(
            "/blobs",
            iter(lambda: f.read(UPLOAD_CHUNK), b""),
            st.st_size,
            BlobAdded,
            params={"pin": pin},
            timeout=None,
        )


def download(api: ApiClient, blob_hash: str, dest: Path, *, force: bool) -> None:
    """Write a blob from the node's store to `dest` through a temp file beside it, checking its
    hash; an existing `dest` is replaced only with `force`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        import blake3

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
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Where to write the blob.",
)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.pass_obj
def get(api: ApiClient, ticket: str, output: Path, force: bool) -> None:
    """Fetch a blob by ticket, verified, into OUTPUT.

    Uses the running node when there is one (the blob then stays in its store);
    otherwise a short-lived endpoint fetches it through a store in the user's
    cache folder (or IROH_BLOBS_PATH when set, where the blob then stays).
    An interrupted fetch resumes where it stopped.

    \b
    Example:
      p2pnode blob get p2pblobagy5d4g7omiprbexkvpjwozeieou2trj5... -o big.iso
    """
    from p2pnode.cli.progress import TransferProgress

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
            import trio

            info = trio.run(_fetch_standalone, parsed, output, progress)
    click.echo(f"{info.hash}  {info.size} bytes  -> {output}")


def _fetch_via_node(api: ApiClient, ticket: str, progress: TransferProgress) -> BlobInfo:
    from p2pnode.api.blob_schemas import FetchEvent

    for event in api.stream("POST", "/blobs/fetch", FetchEvent, json={"ticket": ticket}):
        if event.progress is not None:
            progress.update(event.progress.bytes_done)
        elif event.error is not None:
            fail(event.error)
        elif event.blob is not None:
            progress.update(event.blob.size)
            return event.blob
    fail("the node ended the fetch without a result")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "p2pnode" / "blobs"


async def _standalone_store(
    stack: contextlib.AsyncExitStack, settings: Settings
) -> tuple[BlobStore, bool]:
    """The store a fetch without a node goes through, and whether the blob stays there.

    IROH_BLOBS_PATH when set (the blob stays). Otherwise the user's cache folder, never ./data
    (that is some node's store, maybe locked by it): an interrupted fetch resumes there and a
    finished blob is removed once exported. A cache held by another fetch means a temporary store.
    """
    from p2pnode.blobs.store import BlobStore, StoreError

    if settings.blobs_path is not None:
        try:
            store = await BlobStore.open(settings.blobs_path)
        except (StoreError, OSError) as exc:
            fail(f"cannot open the blob store at {settings.blobs_path} (IROH_BLOBS_PATH): {exc}")
        stack.callback(store.close)
        return store, True
    try:
        store = await BlobStore.open(_cache_dir())
    except (StoreError, OSError) as exc:
        log.info("%s; fetching through a temporary store instead", exc)
        temporary = stack.enter_context(tempfile.TemporaryDirectory(prefix="p2pnode-get-"))
        try:
            store = await BlobStore.open(temporary)
        except (StoreError, OSError) as exc:
            fail(f"cannot create a temporary blob store: {exc}")
    stack.callback(store.close)
    log.info("fetching through the blob store at %s", store.root)
    return store, False


async def _fetch_standalone(
    ticket: tickets.BlobTicket, output: Path, progress: TransferProgress
) -> BlobInfo:
    import iroh

    from p2pnode.blobs.fetch import FetchError, fetch_blob
    from p2pnode.blobs.protocol import BLOBS_ALPN
    from p2pnode.blobs.store import StoreError
    from p2pnode.ids import BlobHash
    from p2pnode.net.addr import PeerAddr
    from p2pnode.net.dialer import Dialer
    from p2pnode.net.endpoint import bind_endpoint, close_endpoint

    settings = load_settings()
    async with contextlib.AsyncExitStack() as stack:
        store, keep = await _standalone_store(stack, settings)
        endpoint = await bind_endpoint(
            iroh.SecretKey.generate(), settings.bind, settings.relay, [BLOBS_ALPN]
        )
        stack.push_async_callback(close_endpoint, endpoint)
        dialer = Dialer(
            endpoint, connect_timeout_s=settings.connect_timeout_s
        )  # not a member: tickets only
        stack.callback(dialer.close_all)

        async def dial(addr: PeerAddr) -> iroh.Connection:
            where = ", ".join(addr.direct_addresses) or addr.relay_url or "no known address"
            log.info("dialling provider %s at %s", addr.node_id[:10], where)
            connection = await dialer.connect(addr, BLOBS_ALPN)
            log.info("connected to provider %s", addr.node_id[:10])
            return connection

        provider = PeerAddr.from_ticket(ticket.provider)
        log.info(
            "fetching blob %s (%d bytes) from provider %s",
            ticket.hash_hex[:12],
            ticket.size,
            provider.node_id[:10],
        )
        try:
            info = await fetch_blob(
                store,
                dial,
                BlobHash(ticket.hash_hex),  # 32 bytes the ticket's codec checked
                [provider],
                root=BlobHash(ticket.root_hex),
                size=ticket.size,
                capability=ticket.capability.hex(),
                on_progress=lambda p: progress.update(p.bytes_done),
            )
            info = await store.export(info.hash, output)
            if not keep:
                await store.remove(info.hash, force=True)
            return info
        except (FetchError, StoreError) as exc:
            fail(str(exc))


@blob.command(name="ls")
@click.pass_obj
def list_blobs(api: ApiClient) -> None:
    """List stored blobs: hash, size, pins and tags, and the jobs that hold it.

    A blob that many jobs hold (a module every job used) shows how many tags hold it and the
    first few jobs.

    \b
    Example:
      p2pnode blob ls
    """
    from pydantic import RootModel

    from p2pnode.api.blob_schemas import BlobEntry
    from p2pnode.jobs.model import tag_job

    for info in api.request("GET", "/blobs", RootModel[list[BlobEntry]]).root:
        tags = [t for t in info.tags if tag_job(t) is None]
        flags = ",".join(["pinned"] * info.pinned + tags) or "-"
        jobs = ",".join(info.jobs) or "-"
        if info.tag_count > len(info.tags):  # a module every job used: the first few jobs
            jobs = f"{info.tag_count} tags: {jobs},..."
        click.echo(f"{info.hash}  {info.size:>12}  {flags}  {jobs}")


@blob.command(name="rm")
@click.argument("blob_hash", metavar="HASH")
@click.option("--force", is_flag=True, help="Delete even if pinned or tagged.")
@click.pass_obj
def remove(api: ApiClient, blob_hash: str, force: bool) -> None:
    """Delete a blob (a kept one only with --force).

    Refused while the blob is pinned, tagged or in use, unless --force.

    \b
    Example:
      p2pnode blob rm 140273d7f520a3b2a06db7862befbf1c5c610720abfdd373abea5439b9025102
    """
    from p2pnode.api.blob_schemas import Done

    api.delete(f"/blobs/{blob_hash}", Done, params={"force": force})
    click.echo(f"removed {blob_hash}")


@blob.command()
@click.pass_obj
def gc(api: ApiClient) -> None:
    """Remove unpinned, untagged blobs that no live job needs.

    \b
    Example:
      p2pnode blob gc
    """
    from p2pnode.blobs.model import GcResult

    result = api.post("/blobs/gc", GcResult)
    click.echo(
        f"removed {len(result.removed)} blobs and {len(result.removed_partials)} partial "
        f"downloads, {result.freed_bytes} bytes"
    )


@blob.command()
@click.argument("blob_hash", metavar="HASH")
@click.pass_obj
def pin(api: ApiClient, blob_hash: str) -> None:
    """Keep a stored blob from garbage collection.

    \b
    Example:
      p2pnode blob pin 140273d7f520a3b2a06db7862befbf1c5c610720abfdd373abea5439b9025102
    """
    from p2pnode.api.blob_schemas import Done

    api.post(f"/blobs/{blob_hash}/pin", Done)
    click.echo(f"pinned {blob_hash}")


@blob.command()
@click.argument("blob_hash", metavar="HASH")
@click.pass_obj
def unpin(api: ApiClient, blob_hash: str) -> None:
    """Let garbage collection remove a blob once nothing uses it.

    \b
    Example:
      p2pnode blob unpin 140273d7f520a3b2a06db7862befbf1c5c610720abfdd373abea5439b9025102
    """
    from p2pnode.api.blob_schemas import Done

    api.delete(f"/blobs/{blob_hash}/pin", Done)
    click.echo(f"unpinned {blob_hash}")
