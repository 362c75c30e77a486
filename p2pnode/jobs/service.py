"""The node's jobs service: submit and track jobs as their origin, and feed announcements to the
worker.

It is also the jobs control protocol's handler on the router (members only), and it subscribes
to gossip itself for the announcements it follows.

The origin is the single source of truth for its jobs (SQLite, durable before `submit` returns);
gossip only tells the cluster, in a bounded summary, that a job exists or ended, and only the
job's origin may say so. A sweeper returns lapsed leases to pending and re-announces them, so a
job outlives any worker that dies holding it. Every loop over stored or peer data survives any
single bad value: it logs one line and carries on.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Collection, Container
from pathlib import Path
from typing import Protocol, get_args

import iroh
import pydantic_core
import trio
from pydantic import BaseModel, ValidationError

from p2pnode.blobs.fetch import FetchError
from p2pnode.blobs.service import BlobService
from p2pnode.blobs.store import BlobInfo, BlobNotFound, StoreError
from p2pnode.executors.base import DEFAULT_MAXIMA
from p2pnode.executors.wasm import (
    MAIN_WORKFLOW,
    InvalidModule,
    assemble,
    list_workflows,
    load_module_bytes,
)
from p2pnode.gossip.service import GossipEvent, Received
from p2pnode.ids import BlobHash, EnvelopeId, NodeId
from p2pnode.jobs import model
from p2pnode.jobs.announcements import (
    MAX_ANNOUNCED,
    JobAnnounced,
    JobFinished,
    JobsAnnounced,
)
from p2pnode.jobs.control import JOBS_ALPN, Admit, ControlClient, ControlError, ControlServer
from p2pnode.jobs.logs import JobLogs
from p2pnode.jobs.store import JobStore
from p2pnode.jobs.submission import (
    BatchRefused,
    JobSubmission,
    MountSubmission,
    SubmissionError,
    SubmissionTooLarge,
)
from p2pnode.jobs.worker import Worker, provider_addrs
from p2pnode.net.addr import PeerAddr
from p2pnode.net.endpoint import serve_streams

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
REANNOUNCE_EVERY = 30  # sweeps
ANNOUNCED_BYTES = 32 * 1024
"""Summaries one `JobsAnnounced` carries at most, in JSON bytes: half an envelope's bound."""
WAIT_ALL_CHECK_S = 0.05
"""How often a wait for many jobs looks again while they change."""
WORKFLOWS_CACHED = 256
"""Binary module blobs whose workflows and reference the origin remembers (a blob's content never
changes)."""


class Gossip(Protocol):
    """What the jobs service needs from gossip (p2pnode.gossip.service.GossipService)."""

    def publish(self, message: BaseModel) -> EnvelopeId: ...

    def retire(self, envelope_id: EnvelopeId) -> None: ...

    def subscribe(
        self, buffer: int = ..., kinds: Collection[str] | None = None
    ) -> trio.MemoryReceiveChannel[GossipEvent]: ...


class JobService:
    alpn = JOBS_ALPN
    open_to_strangers = False

    def __init__(
        self,
        node_id: NodeId,
        store: JobStore,
        blobs: BlobService,
        gossip: Gossip,
        worker: Worker,
        client: ControlClient,
        self_addr: Callable[[], PeerAddr],
        resolve: Callable[[NodeId], PeerAddr | None],
        lease_s: float,
        admit: Admit,
        first_claimer: Callable[[model.Job], NodeId | None] = lambda _: None,
        collect_bytes: int = DEFAULT_MAXIMA.output_bytes,
    ) -> None:
        """`first_claimer`: the worker an announcement asks to claim the job first.
        `collect_bytes`: the most output bytes of one job this origin brings home by itself."""
        self.id = node_id
        self.store = store
        self.worker = worker
        self._blobs = blobs
        self._gossip = gossip
        self._client = client
        self._self_addr = self_addr
        self._resolve = resolve
        self._first_claimer = first_claimer
        self._collect_bytes = collect_bytes
        self.logs = JobLogs()
        self.control = ControlServer(
            store, lease_s, self._changed, worker.stop_run, self._on_log, admit
        )
        self._announcements: dict[str, EnvelopeId] = {}
        """pending job -> the envelope that announced it"""
        self._sharing: dict[EnvelopeId, int] = {}
        """envelope -> how many jobs in `_announcements` it announced"""
        self._workflows: dict[BlobHash, tuple[list[str], model.BlobRef]] = {}
        """binary module blob -> its workflows and reference, oldest first"""
        self._change = trio.Event()
        self._nursery: trio.Nursery | None = None
        # From now: nothing gossip hears before `run` is lost.
        self._events = gossip.subscribe(
            kinds=(JobAnnounced.KIND, JobsAnnounced.KIND, JobFinished.KIND)
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._follow_gossip)
            # After a restart, nothing submitted stays unknown.
            self._announce_many(
                self.store.list(model.JobState.PENDING, limit=10_000, origin=self.id)
            )
            task_status.started()
            for sweep in itertools.count(1):
                for job in self.store.expire_leases():
                    log.info("lease of job %s lapsed; job is %s", job.id, job.state.value)
                    await self._changed(job)
                if sweep % REANNOUNCE_EVERY == 0:  # workers that joined or freed up since hear
                    self._announce_many(
                        self.store.claimable(get_args(model.Executor), origin=self.id)
                    )
                await trio.sleep(SWEEP_INTERVAL_S)

    async def handle(self, connection: iroh.Connection) -> None:
        await serve_streams(connection, self.control.handle_stream)

    # -- origin side -------------------------------------------------------------------------

    async def submit_files(self, request: JobSubmission) -> model.Job:
        """Add the module, artifacts and a large input as blobs held by the job's tags
        (`model.job_tag`), then submit. The module is checked (valid binary or WAT, assembled; the
        workflow exists) so a bad one fails now, not at run time. A refused submission releases
        what it tagged."""
        job_id = model.new_job_id(self.store.now())
        async with self._released_unless_stored([job_id]):
            return await self.submit(await self._spec(job_id, request), job_id)

    async def submit_batch(self, requests: list[JobSubmission]) -> list[model.Job]:
        """Submit many jobs as `submit_files` does each, all or none: the first entry refused
        raises `BatchRefused` with its index, and nothing is stored. One transaction stores them
        all, and one announcement names up to `MAX_ANNOUNCED` of them."""
        now = self.store.now()
        ids = [model.new_job_id(now) for _ in requests]
        specs: list[tuple[str, model.JobSpec]] = []
        async with self._released_unless_stored(ids):
            # Every blob named by hash is held at once, in one transaction, not one per job.
            tagged = {
                tag: blob_hash
                for job_id, request in zip(ids, requests, strict=True)
                for tag, blob_hash in _named_blobs(job_id, request).items()
            }
            await self._blobs.set_tags(tagged)
            for index, (job_id, request) in enumerate(zip(ids, requests, strict=True)):
                try:
                    specs.append((job_id, await self._spec(job_id, request, tagged.keys())))
                except SubmissionError as exc:
                    raise BatchRefused(index, exc) from None
            jobs = self.store.submit_many(self.id, specs)
        self._wake()
        self._announce_many(jobs)
        return jobs

    @contextlib.asynccontextmanager
    async def _released_unless_stored(self, job_ids: list[str]) -> AsyncIterator[None]:
        """Release the blobs tagged for jobs that end up not stored (refused, interrupted)."""
        try:
            yield
        except BaseException:
            if unstored := {i for i in job_ids if self.store.get(i) is None}:
                with trio.CancelScope(shield=True):
                    await self._release_blobs(unstored)
            raise

    async def _spec(
        self, job_id: str, request: JobSubmission, tagged: Container[str] = ()
    ) -> model.JobSpec:
        """The job's spec, its blobs held by its tags (those in `tagged` are set already)."""
        input_json = pydantic_core.to_json(request.input)
        if len(input_json) > model.MAX_INPUT_BYTES:
            raise SubmissionTooLarge(
                f"input of {len(input_json)} bytes exceeds {model.MAX_INPUT_BYTES}: send large "
                "data as an artifact"
            )

        def tag(role: str) -> str:
            return model.job_tag(job_id, role)

        module = await self._module(request, tag, tagged)
        artifacts = {}
        for name, path in request.artifacts.items():
            try:
                info = await self._blobs.add(path, pin=False, tag=tag(f"artifact/{name}"))
            except (OSError, StoreError) as exc:
                raise SubmissionError(f"cannot add artifact {name!r} from {path}: {exc}") from None
            artifacts[name] = model.BlobRef.held_by(info, self.id)
        for name, blob_hash in request.artifact_blobs.items():
            artifacts[name] = await self._held(
                blob_hash, tag(f"artifact/{name}"), f"artifact {name!r}", tagged
            )
        input_blob = None
        if len(input_json) > model.INLINE_INPUT_BYTES:
            input_blob = model.BlobRef.held_by(
                await self._blobs.add_bytes(input_json, pin=False, tag=tag("input")), self.id
            )
        stdin = None
        if request.stdin_blob is not None:
            stdin = await self._held(request.stdin_blob, tag("stdin"), "stdin", tagged)
        mounts = {
            name: await self._mount(name, mount, tag, tagged)
            for name, mount in request.mounts.items()
        }
        return request.to_spec(
            module=module, artifacts=artifacts, input_blob=input_blob, stdin=stdin, mounts=mounts
        )

    async def _mount(
        self,
        name: str,
        request: MountSubmission,
        tag: Callable[[str], str],
        tagged: Container[str],
    ) -> model.Mount:
        """A mount whose blobs (for a folder: its manifest and every file) are here, held."""
        what = f"mount {name!r}"
        source = await self._held(request.blob, tag(f"mount/{name}"), what, tagged)
        if request.directory:
            if source.size > model.MAX_MANIFEST_BYTES:
                limit = model.MAX_MANIFEST_BYTES
                raise SubmissionError(f"the {what} manifest is over {limit} bytes")
            try:
                manifest = model.Manifest.model_validate_json(
                    await self._blobs.read_bytes(request.blob)
                )
            except ValidationError as exc:
                raise SubmissionError(
                    f"the {what} manifest is invalid: {exc.errors()[0]['msg']}"
                ) from None
            for index, entry in enumerate(manifest.files):
                role = f"mount/{name}/{index}"
                ref = await self._held(entry.hash, tag(role), f"{what} file {entry.path!r}")
                if (ref.size, ref.root) != (entry.size, entry.root):
                    raise SubmissionError(f"the {what} manifest misstates {entry.path!r}")
        return model.Mount(
            source=source, directory=request.directory, guest_path=request.guest_path
        )

    async def _module(
        self, request: JobSubmission, tag: Callable[[str], str], tagged: Container[str]
    ) -> model.BlobRef:
        """The module as a held binary blob, checked off the trio thread (compiling takes a
        while). An uploaded binary is its own blob: it is not stored again, and its workflows are
        listed once however many jobs use it."""
        source: Path | bytes
        uploaded = None
        try:
            if request.module is not None:
                source, what = request.module, f"module {request.module}"
            else:
                assert request.module_blob is not None
                what = f"module blob {request.module_blob[:12]}"
                if (known := self._workflows.get(request.module_blob)) is not None:
                    _check_workflows(known[0], request)
                    return await self._held_again(known[1], tag("module"), tagged)
                uploaded = await self._held(request.module_blob, tag("source"), "module")
                source = await self._blobs.read_bytes(request.module_blob)
            wasm, workflows = await trio.to_thread.run_sync(_load_module, source)
            _check_workflows(workflows, request)
        except (OSError, StoreError, InvalidModule) as exc:
            raise SubmissionError(f"cannot use {what}: {exc}") from None
        if uploaded is not None and wasm == source:
            self._workflows[uploaded.hash] = (workflows, uploaded)
            if len(self._workflows) > WORKFLOWS_CACHED:
                del self._workflows[next(iter(self._workflows))]
            return uploaded
        info = await self._blobs.add_bytes(wasm, pin=False, tag=tag("module"))
        return model.BlobRef.held_by(info, self.id)

    async def _held_again(
        self, ref: model.BlobRef, tag: str, tagged: Container[str]
    ) -> model.BlobRef:
        """A module blob known from an earlier job, held by `tag` (set first unless it is in
        `tagged`, so GC cannot take it before we look): checked to be here, not described again
        (a description reads the blob's tags; it once grew with every job that used the
        module)."""
        if tag not in tagged:
            await self._blobs.set_tag(tag, ref.hash)
        if not self._blobs.has(ref.hash):
            self._workflows.pop(ref.hash, None)
            raise SubmissionError(
                f"the module blob {ref.hash} is not on this node; upload it first"
            )
        return ref.model_copy()

    async def _held(
        self, blob_hash: BlobHash, tag: str, what: str, tagged: Container[str] = ()
    ) -> model.BlobRef:
        """A stored blob, held by `tag` (set first unless it is in `tagged`, so GC cannot take it
        before we look)."""
        try:
            if tag in tagged:
                info = await self._blobs.info(blob_hash)
            else:
                info = await self._blobs.hold(blob_hash, tag)
        except BlobNotFound:
            raise SubmissionError(
                f"the {what} blob {blob_hash} is not on this node; upload it first"
            ) from None
        except StoreError as exc:
            raise SubmissionError(f"cannot use {what}: {exc}") from None
        return model.BlobRef.held_by(info, self.id)

    async def submit(self, spec: model.JobSpec, job_id: str | None = None) -> model.Job:
        job = self.store.submit(self.id, spec, job_id)
        await self._changed(job)
        return job

    async def cancel(self, job_id: str) -> model.Job:
        """Cancel, and tell the worker running it to stop now rather than at its next renewal."""
        before = self.store.get(job_id)
        job = self.store.cancel(job_id)
        await self._changed(job)
        if before is not None and before.lease is not None and self._nursery is not None:
            self._nursery.start_soon(self._stop_run, before.lease.worker, job_id)
        return job

    async def _stop_run(self, worker: NodeId, job_id: str) -> None:
        if (addr := self._resolve(worker)) is None:
            return
        try:
            await self._client.ask(addr, model.StopRun(job_id=job_id))
        except ControlError as exc:
            log.info(
                "could not tell %s to stop job %s (its lease renewal will): %s",
                worker[:10],
                job_id,
                exc,
            )

    async def wait(self, job_id: str) -> model.Job | None:
        """Return once the job is terminal (or unknown)."""
        while (job := self.store.get(job_id)) is not None and not job.state.terminal:
            await self._change.wait()
        return job

    def _wake(self) -> None:
        """Wake every `wait`: some job changed."""
        self._change.set()
        self._change = trio.Event()

    async def wait_all(self, job_ids: list[str]) -> None:
        """Return once every one of the jobs is terminal (or unknown): one query per change,
        at most every `WAIT_ALL_CHECK_S`, however many jobs change meanwhile."""
        while self.store.unfinished(job_ids):
            await self._change.wait()
            await trio.sleep(WAIT_ALL_CHECK_S)  # a rate limit, not a synchronisation

    async def _changed(self, job: model.Job) -> None:
        self._wake()
        if job.origin != self.id:
            return
        if job.state == model.JobState.PENDING:
            self._announce(job)
        elif job.state.terminal:
            self.logs.ended(job.id)
            self._unannounce(job.id)
            if job.state is not model.JobState.SUCCEEDED:
                # Only its lease holder's report makes a job succeed, and that worker is done: the
                # end is news only to a worker that may still run it (cancelled, lease lapsed).
                # Half the gossip per job; a run on a lapsed lease ends at its next renewal.
                self._publish(JobFinished(job=job.summary()))
            if job.outputs and self._nursery is not None:  # a failed command keeps its outputs
                self._nursery.start_soon(self._collect_outputs, job)

    def _on_log(self, job: model.Job, chunk: model.LogChunk) -> None:
        if job.origin == self.id:
            self.logs.append(job.id, job.attempts, chunk)

    def _announce(self, job: model.Job) -> None:
        self._unannounce(job.id)
        announcement = JobAnnounced(
            job=job.summary(), origin_addr=self._self_addr(), first=self._first_claimer(job)
        )
        self._announced(self._publish(announcement), [job.id])
        self.on_announced(announcement, self.id)

    def _announce_many(self, jobs: list[model.Job]) -> None:
        """Announce pending jobs (new, after a restart, or again), several to an envelope
        (`JobsAnnounced`, at most `MAX_ANNOUNCED` and `ANNOUNCED_BYTES` of summaries each)."""
        groups: list[list[tuple[model.Job, model.JobSummary]]] = [[]]
        size = 0
        for job in jobs:
            self._unannounce(job.id)  # announced anew (a restart, a re-announcement)
            summary = job.summary()
            length = len(summary.model_dump_json())
            if len(groups[-1]) == MAX_ANNOUNCED or (groups[-1] and size + length > ANNOUNCED_BYTES):
                groups.append([])
                size = 0
            groups[-1].append((job, summary))
            size += length
        origin_addr = self._self_addr()
        for group in groups:
            if not group:
                continue
            many = JobsAnnounced(
                jobs=[summary for _, summary in group],
                origin_addr=origin_addr,
                first=[self._first_claimer(job) for job, _ in group],
            )
            self._announced(self._publish(many), [job.id for job, _ in group])
            for announcement in many.each():
                self.on_announced(announcement, self.id)

    def _announced(self, envelope: EnvelopeId | None, job_ids: list[str]) -> None:
        """Remember the envelope announcing these jobs, to retire it once none of them needs it."""
        if envelope is None:
            return
        for job_id in job_ids:
            self._announcements[job_id] = envelope
        self._sharing[envelope] = len(job_ids)

    def _unannounce(self, job_id: str) -> None:
        """The job's announcement is over (it ended, or is announced anew): its envelope retires
        once it names no job that still needs it."""
        envelope = self._announcements.pop(job_id, None)
        if envelope is None:
            return
        self._sharing[envelope] -= 1
        if self._sharing[envelope] <= 0:
            del self._sharing[envelope]
            self._gossip.retire(envelope)

    def _publish(self, message: JobAnnounced | JobsAnnounced | JobFinished) -> EnvelopeId | None:
        try:
            return self._gossip.publish(message)
        except ValueError as exc:  # summaries are bounded; this is a last line of defence
            what = message.jobs[0].id if isinstance(message, JobsAnnounced) else message.job.id
            log.warning("could not announce job %s: %s", what, exc)
            return None

    async def _collect_outputs(self, job: model.Job) -> None:
        """Bring a finished job's outputs home, so they outlive the worker that made them; at
        most `collect_bytes` of them (the worker reports their sizes, and each fetch holds it to
        its size): a member must not fill this node's disk by reporting. A person can still
        fetch larger ones (`job get`)."""
        if (total := sum(ref.size for ref in job.outputs.values())) > self._collect_bytes:
            log.warning(
                "left the outputs of job %s with its worker: %d bytes, more than the %d this node "
                "collects (P2PNODE_MAX_JOB_OUTPUT_MIB)",
                job.id,
                total,
                self._collect_bytes,
            )
            return
        for name, ref in job.outputs.items():
            try:
                await self.fetch_output(job, name, ref)
            except (FetchError, StoreError) as exc:
                log.warning("could not collect output %r of job %s: %s", name, job.id, exc)

    async def fetch_output(self, job: model.Job, name: str, ref: model.BlobRef) -> BlobInfo:
        """One output of a job, here and held by the job (tagged before it arrives, so GC
        never takes it in between)."""
        await self._blobs.set_tag(model.job_tag(job.id, f"output/{name}"), ref.hash)
        return await self._blobs.fetch(
            ref.hash, provider_addrs(ref, self._resolve), root=ref.root, size=ref.size
        )

    # -- removal and retention ---------------------------------------------------------------

    async def remove(self, job_id: str, *, force: bool = False) -> model.Job:
        """Forget a finished job and release its blobs to GC; a live job is refused (`Refused`)
        unless `force`, which cancels it first."""
        job = self.store.get(job_id)
        if force and job is not None and not job.state.terminal:
            await self.cancel(job_id)
        job = self.store.delete(job_id)
        await self._release_blobs({job_id})
        return job

    async def remove_finished(self, retention_s: float) -> list[str]:
        """Remove the jobs that finished more than `retention_s` ago; returns their ids.

        Also drops the job tags this node holds for jobs it does not store (the outputs it made
        as a worker, a submission that never completed) once they are that old, unless it still
        runs the job. The age is read from the job's id, which another origin chose: one dated
        more than `retention_s` ahead is forged (it would be held forever), so it goes too."""
        now = self.store.now()
        cutoff, forged = now - retention_s, now + retention_s
        removed = self.store.finished_before(cutoff)
        doomed = set(removed)
        for tag in (await self._blobs.tags()).keys():
            holder = model.tag_job(tag)
            if holder is not None and (
                holder in doomed
                or holder not in self.worker.running
                and not cutoff <= model.job_id_time(holder) <= forged
                and self.store.get(holder) is None
            ):
                await self._blobs.drop_tag(tag)
        # The rows go last: a job gone from the store has let go of its blobs (a pass cut short
        # leaves its jobs to the next one).
        for job_id in removed:
            self.store.delete(job_id)
        return removed

    async def _release_blobs(self, job_ids: set[str]) -> None:
        for tag in (await self._blobs.tags()).keys():
            if model.tag_job(tag) in job_ids:
                await self._blobs.drop_tag(tag)

    # -- from gossip -------------------------------------------------------------------------

    async def _follow_gossip(self) -> None:
        async for event in self._events:
            if not isinstance(event, Received):
                continue
            try:
                if event.kind == JobAnnounced.KIND:
                    self.on_announced(JobAnnounced.model_validate(event.payload), event.origin)
                elif event.kind == JobsAnnounced.KIND:
                    for one in JobsAnnounced.model_validate(event.payload).each():
                        self.on_announced(one, event.origin)
                elif event.kind == JobFinished.KIND:
                    self.on_finished(JobFinished.model_validate(event.payload), event.origin)
            except ValidationError as exc:
                log.warning(
                    "ignored a malformed %s announcement: %s", event.kind, exc.errors()[0]["msg"]
                )

    def on_announced(self, announcement: JobAnnounced, signer: str) -> None:
        """A job up for grabs; believed only when its origin signed it and is where we claim."""
        job = announcement.job
        if signer != job.origin or announcement.origin_addr.node_id != job.origin:
            log.warning(
                "ignored an announcement of job %s by %s, not its origin", job.id, signer[:10]
            )
            return
        self.worker.heard(job.id)
        if self.worker.wants(job) and self._nursery is not None:
            self._nursery.start_soon(self.worker.consider, announcement)

    def set_draining(self, draining: bool) -> None:
        """Drain the worker, or undrain it and consider what it heard of meanwhile."""
        if draining:
            self.worker.drain()
            return
        for announcement in self.worker.undrain():
            self.on_announced(announcement, announcement.job.origin)

    def on_finished(self, finished: JobFinished, signer: str) -> None:
        """A job ended: if we run it (it was cancelled), stop; believed only from its origin."""
        job = finished.job
        if signer != job.origin:
            log.warning(
                "ignored the end of job %s announced by %s, not its origin", job.id, signer[:10]
            )
            return
        if job.origin != self.id and job.state.terminal:
            self.worker.stop_run(job.id, job.origin)

    def protected_blobs(self) -> set[BlobHash]:
        """Blobs that live jobs still need: GC must keep them."""
        keep: set[BlobHash] = set()
        for job_id in self.store.live_ids():
            if job := self.store.get(job_id):
                keep.add(job.spec.module.hash)
                keep.update(ref.hash for ref in job.spec.artifacts.values())
                if job.spec.input_blob is not None:
                    keep.add(job.spec.input_blob.hash)
                if job.spec.command is not None and job.spec.command.stdin is not None:
                    keep.add(job.spec.command.stdin.hash)
                keep.update(mount.source.hash for mount in job.spec.mounts.values())
        return keep


def _named_blobs(job_id: str, request: JobSubmission) -> dict[str, BlobHash]:
    """The blobs a submission names by hash, by the tags its job holds them with (as `_spec`
    does; a folder's files are found in its manifest later)."""
    blobs = {model.job_tag(job_id, f"artifact/{n}"): h for n, h in request.artifact_blobs.items()}
    blobs |= {model.job_tag(job_id, f"mount/{n}"): m.blob for n, m in request.mounts.items()}
    if request.module_blob is not None:
        blobs[model.job_tag(job_id, "module")] = request.module_blob
    if request.stdin_blob is not None:
        blobs[model.job_tag(job_id, "stdin")] = request.stdin_blob
    return blobs


def _check_workflows(workflows: list[str], request: JobSubmission) -> None:
    """Refuse a module that lacks what the request runs."""
    workflow = request.workflow
    if request.is_command:
        if MAIN_WORKFLOW not in workflows:
            raise InvalidModule("a command job needs a module that exports _start")
    elif request.executor == "wasi":  # Flawless modules follow Flawless's own conventions
        available = ", ".join(workflows) or "none"
        if workflow is not None and workflow not in workflows:
            raise InvalidModule(f"no workflow {workflow!r} (available: {available})")
        if workflow is None and len(workflows) != 1:
            raise InvalidModule(
                f"name the workflow to run with --workflow (available: {available})"
            )


def _load_module(source: Path | bytes) -> tuple[bytes, list[str]]:
    """A module file or blob content as a WebAssembly binary, and its workflows."""
    wasm = load_module_bytes(source) if isinstance(source, Path) else assemble(source)
    return wasm, list_workflows(wasm)
