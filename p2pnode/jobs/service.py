"""The node's jobs service: submit and track jobs as their origin, and feed announcements to the worker.

The origin is the single source of truth for its jobs (SQLite, durable before `submit` returns);
gossip only tells the cluster that a job exists or ended. A sweeper returns lapsed leases to
pending and re-announces them, so a job outlives any worker that dies holding it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, get_args

import trio
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from p2pnode.blobs.fetch import FetchError
from p2pnode.blobs.service import BlobService
from p2pnode.blobs.store import BlobNotFound, StoreError
from p2pnode.executors.wasm import InvalidModule, load_module_bytes
from p2pnode.jobs import model
from p2pnode.jobs.announcements import JobAnnounced, JobFinished
from p2pnode.jobs.control import ControlServer
from p2pnode.jobs.store import JobStore
from p2pnode.jobs.worker import Worker, provider_addrs
from p2pnode.membership import PeerAddr

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
REANNOUNCE_EVERY = 30  # sweeps


class JobSubmission(BaseModel):
    """A job as a person submits it: blobs the CLI uploaded (or local files the node turns into blobs)."""

    model_config = ConfigDict(extra="forbid")

    module: Path | None = None
    module_blob: model.Hex64 | None = None
    workflow: str | None = None
    input: JsonValue = None
    artifacts: dict[model.ArtifactName, Path] = {}
    artifact_blobs: dict[model.ArtifactName, model.Hex64] = {}
    executor: model.Executor = "wasi"
    limits: model.Limits = model.Limits()
    max_attempts: int = Field(3, ge=1, le=100)


class SubmissionError(Exception):
    """A module or artifact file cannot be used; the message names it."""


class Gossip(Protocol):
    """What the jobs service needs from gossip (p2pnode.gossip.service.GossipService)."""

    def publish(self, message: BaseModel) -> str: ...

    def retire(self, envelope_id: str) -> None: ...


class JobService:
    def __init__(
        self,
        node_id: str,
        store: JobStore,
        blobs: BlobService,
        gossip: Gossip,
        worker: Worker,
        self_addr: Callable[[], PeerAddr],
        resolve: Callable[[str], PeerAddr | None],
        lease_s: float,
    ) -> None:
        self.id = node_id
        self.store = store
        self.worker = worker
        self._blobs = blobs
        self._gossip = gossip
        self._self_addr = self_addr
        self._resolve = resolve
        self.control = ControlServer(store, lease_s, self._changed)
        self._announcements: dict[str, str] = {}
        self._change = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for job in self.store.list(limit=10_000, origin=self.id):
                if job.state == model.JobState.PENDING:
                    self._announce(job)  # after a restart, nothing submitted stays unknown
            task_status.started()
            for sweep in itertools.count(1):
                for job in self.store.expire_leases():
                    log.info("lease of job %s lapsed; job is %s", job.id, job.state.value)
                    await self._changed(job)
                if sweep % REANNOUNCE_EVERY == 0:
                    for job in self.store.claimable(get_args(model.Executor), origin=self.id):
                        self._announce(job)  # nobody took it: workers that joined or freed up since hear of it
                await trio.sleep(SWEEP_INTERVAL_S)

    # -- origin side -------------------------------------------------------------------------

    async def submit_files(self, request: JobSubmission) -> model.Job:
        """Add the module and artifacts as pinned blobs, then submit. `.wat` text is assembled first."""
        if request.module_blob is not None:
            module = await self._stored_blob(request.module_blob, "module")
        elif request.module is not None:
            try:
                module_bytes = load_module_bytes(request.module)
            except (OSError, InvalidModule) as exc:
                raise SubmissionError(f"cannot use module {request.module}: {exc}") from None
            module = model.BlobRef.held_by(await self._blobs.store.add_bytes(module_bytes, pin=True), self.id)
        else:
            raise SubmissionError("a job needs a module (module_blob)")
        artifacts = {name: await self._stored_blob(h, f"artifact {name!r}") for name, h in request.artifact_blobs.items()}
        for name, path in request.artifacts.items():
            try:
                artifacts[name] = model.BlobRef.held_by(await self._blobs.add(path), self.id)
            except (OSError, StoreError) as exc:
                raise SubmissionError(f"cannot add artifact {name!r} from {path}: {exc}") from None
        spec = model.JobSpec(
            workflow=request.workflow,
            module=module,
            input=request.input,
            artifacts=artifacts,
            requirements=model.Requirements(executor=request.executor, limits=request.limits),
            max_attempts=request.max_attempts,
        )
        return await self.submit(spec)

    async def _stored_blob(self, blob_hash: str, what: str) -> model.BlobRef:
        try:
            return model.BlobRef.held_by(await self._blobs.store.info(blob_hash), self.id)
        except BlobNotFound:
            raise SubmissionError(f"the {what} blob {blob_hash} is not on this node; upload it first") from None

    async def submit(self, spec: model.JobSpec) -> model.Job:
        job = self.store.submit(self.id, spec)
        await self._changed(job)
        return job

    async def cancel(self, job_id: str) -> model.Job:
        job = self.store.cancel(job_id)
        await self._changed(job)
        return job

    async def wait(self, job_id: str) -> model.Job | None:
        """Return once the job is terminal (or unknown)."""
        while (job := self.store.get(job_id)) is not None and not job.state.terminal:
            await self._change.wait()
        return job

    async def _changed(self, job: model.Job) -> None:
        self._change.set()
        self._change = trio.Event()
        if job.origin != self.id:
            return
        if job.state == model.JobState.PENDING:
            self._announce(job)
        elif job.state.terminal:
            if envelope := self._announcements.pop(job.id, None):
                self._gossip.retire(envelope)
            self._gossip.publish(JobFinished(job=job))
            if job.state == model.JobState.SUCCEEDED and job.outputs and self._nursery is not None:
                self._nursery.start_soon(self._collect_outputs, job)

    def _announce(self, job: model.Job) -> None:
        if old := self._announcements.pop(job.id, None):
            self._gossip.retire(old)
        announcement = JobAnnounced(job=job, origin_addr=self._self_addr())
        self._announcements[job.id] = self._gossip.publish(announcement)
        self.on_announced(announcement)

    async def _collect_outputs(self, job: model.Job) -> None:
        """Bring a finished job's outputs home, so they outlive the worker that made them."""
        for name, ref in job.outputs.items():
            try:
                await self._blobs.fetch(ref.hash, provider_addrs(ref, self._resolve), root=ref.root)
                await self._blobs.store.pin(ref.hash)
            except (FetchError, StoreError) as exc:
                log.warning("could not collect output %r of job %s: %s", name, job.id, exc)

    # -- from gossip -------------------------------------------------------------------------

    def on_announced(self, announcement: JobAnnounced) -> None:
        job = announcement.job
        if job.origin != self.id:
            self.store.upsert_remote(job)
        if self.worker.wants(job) and self._nursery is not None:
            self._nursery.start_soon(self.worker.consider, announcement)

    def on_finished(self, finished: JobFinished) -> None:
        if finished.job.origin != self.id:
            self.store.upsert_remote(finished.job)
            self._change.set()
            self._change = trio.Event()

    def protected_blobs(self) -> set[str]:
        """Blobs that live jobs still need: GC must keep them."""
        keep: set[str] = set()
        for job_id in self.store.live_ids():
            if job := self.store.get(job_id):
                keep.add(job.spec.module.hash)
                keep.update(ref.hash for ref in job.spec.artifacts.values())
        return keep
