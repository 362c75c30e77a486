"""The worker loop: hear of jobs, claim them from their origin, run them, report back.

A worker takes at most `max_jobs` jobs at once (further candidates queue on the limiter), renews
its lease while a job runs (and while it stores the outputs), and abandons the run the moment a
renewal is refused or the origin says the job was cancelled: finishing it would be wasted work
whose result is refused. A worker that is stopped hands its running jobs back to their origins.
While a job runs, the worker tails the stdout and stderr files its executor writes and sends the
origin what is new, a bounded chunk per stream every `LOG_INTERVAL_S` (live logs, best effort:
the whole streams are output blobs at the end).

A draining worker claims nothing new but finishes what it runs (or hands it back at once, with
`hand_back`); the jobs it hears of meanwhile are held and considered when it is undrained. The
drain flag is a file, so a restart keeps it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, get_args

import trio
from pydantic import ValidationError

from p2pnode.blobs.fetch import FetchError
from p2pnode.blobs.service import BlobService
from p2pnode.blobs.store import StoreError
from p2pnode.executors.base import ExecutionResult, Executor
from p2pnode.ids import LeaseToken, NodeId
from p2pnode.jobs import model
from p2pnode.jobs.announcements import JobAnnounced
from p2pnode.jobs.control import ControlClient, ControlError
from p2pnode.jobs.model import WorkerStatus
from p2pnode.metrics import Metrics
from p2pnode.net.addr import PeerAddr

log = logging.getLogger(__name__)

MAX_CLAIM_RETRIES = 5
MAX_HELD = 1000
"""Announcements a draining worker keeps for later; the oldest go first (origins re-announce)."""
RELEASE_TIMEOUT_S = 3.0
"""How long a stopping worker tries to hand a job back before it leaves the lease to lapse."""
LOG_INTERVAL_S = 0.25
"""How often a running job's new output goes to its origin: at most `model.MAX_LOG_CHUNK` bytes
per stream each time."""


def provider_addrs(
    ref: model.BlobRef, resolve: Callable[[NodeId], PeerAddr | None], first: PeerAddr | None = None
) -> list[PeerAddr]:
    """Where a blob can be fetched: `first` (usually the job's origin), then its known providers."""
    addrs = [first] if first is not None else []
    for node_id in ref.providers:
        if (addr := resolve(node_id)) is not None and all(a.node_id != node_id for a in addrs):
            addrs.append(addr)
    return addrs


class _Candidate:
    """A job a `consider` call has; `heard` is when (trio clock) it was last announced."""

    def __init__(self) -> None:
        self.heard = trio.current_time()


class _BadManifest(Exception):
    """A mounted folder's manifest is unusable; the message names the mount."""


class Worker:
    def __init__(
        self,
        node_id: NodeId,
        executors: dict[str, Executor],
        blobs: BlobService,
        control: ControlClient,
        resolve: Callable[[NodeId], PeerAddr | None],
        work_dir: Path,
        max_jobs: int,
        labels: Mapping[str, str],
        drain_flag: Path,
        metrics: Metrics,
    ) -> None:
        self.id = node_id
        self._metrics = metrics
        self.executors = executors
        self._blobs = blobs
        self._control = control
        self._resolve = resolve
        self._work_dir = work_dir
        self._spare: list[Path] = []
        """Emptied folders of earlier runs, to be renamed for the next (`_workdir`)."""
        for spare in work_dir.glob(f"{SPARE_PREFIX}*"):  # a restart's: their names may repeat
            shutil.rmtree(spare, ignore_errors=True)
        self._limiter = trio.CapacityLimiter(max(max_jobs, 1))
        self.max_jobs = max_jobs
        self.labels = dict(labels)
        self._drain_flag = drain_flag
        self.draining = drain_flag.exists()
        self._held: dict[str, JobAnnounced] = {}
        self.running: set[str] = set()
        self._claiming = 0
        self._settled = trio.Event()
        """Set (and replaced) whenever a claim is answered or a run ends."""
        self._runs: dict[str, tuple[str, trio.CancelScope]] = {}
        """job id -> (origin, the scope that stops the run)"""
        self._handing_back: set[str] = set()
        self._turns: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        """origin -> its turn to be claimed from: one claim at a time, taking every free slot"""
        self._considering: dict[str, _Candidate] = {}
        """job id -> the `consider` call that has it"""
        self._none_pending: dict[str, float] = {}
        """origin -> when (trio clock) it last said it has no pending job: what was announced
        before is stale, and not worth a claim"""
        self.executed = 0
        self.succeeded = 0
        self.failed = 0

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            executors=sorted(self.executors),
            max_jobs=self.max_jobs,
            labels=self.labels,
            draining=self.draining,
            running=sorted(self.running),
            executed=self.executed,
            succeeded=self.succeeded,
            failed=self.failed,
        )

    def wants(self, job: model.JobSummary) -> bool:
        return (
            self.max_jobs > 0
            and job.state == model.JobState.PENDING
            and job.requirements.executor in self.executors
            and job.requirements.admits(self.labels)
            and job.id not in self._considering
        )

    def hold(self, announcement: JobAnnounced) -> bool:
        """While draining, keep an announcement for `undrain` instead of claiming it now."""
        if not self.draining:
            return False
        self._held.pop(announcement.job.id, None)
        self._held[announcement.job.id] = announcement
        while len(self._held) > MAX_HELD:
            del self._held[next(iter(self._held))]
        return True

    def drain(self) -> None:
        """Claim nothing new from now on, also after a restart (the flag file outlives us)."""
        self._drain_flag.touch()
        self.draining = True

    def hand_back(self) -> None:
        """Stop every run now and give its job back to its origin (pending again, the attempt
        not counted), as a stopping node does, so that another worker takes it."""
        for job_id, (_origin, stopped) in self._runs.items():
            self._handing_back.add(job_id)
            stopped.cancel()

    async def wait_idle(self) -> None:
        """Return once no job runs here and no claim is on its way (what a drain waits for)."""
        while self.running or self._claiming:
            await self._settled.wait()

    def _settle(self) -> None:
        self._settled.set()
        self._settled = trio.Event()

    def undrain(self) -> list[JobAnnounced]:
        """Claim again; returns the announcements held meanwhile, to be considered now."""
        self._drain_flag.unlink(missing_ok=True)
        self.draining = False
        held = list(self._held.values())
        self._held.clear()
        return held

    async def consider(self, announcement: JobAnnounced) -> None:
        """Try to claim and run one announced job; returns when it is done with it either way.
        A job that is backing off is waited for without holding one of the `max_jobs` slots.

        One claim at a time goes to an origin, and it takes every free slot: up to that many
        jobs come back in one round trip (a burst's announcements queue on the origin's turn,
        each finding its job taken, often by this very worker)."""
        job_id = announcement.job.id
        origin = announcement.job.origin
        candidate = self._considering[job_id] = _Candidate()
        try:
            if announcement.first not in (None, self.id):
                await trio.sleep(model.DEFER_TO_FIRST_S)  # a head start, not a synchronisation
            for attempt in range(MAX_CLAIM_RETRIES):
                slots: list[object] = []
                try:
                    async with self._turns[origin]:
                        await self._limiter.acquire_on_behalf_of(slot := object())
                        slots.append(slot)
                        if self.hold(announcement):  # draining: kept for `undrain`
                            return
                        idle_since = self._none_pending.get(origin, -math.inf)
                        if attempt == 0 and (
                            candidate.heard < idle_since or job_id in self.running
                        ):
                            return  # taken while it queued, like everything else there, or ours
                        slots += self._spare_slots()
                        reply = await self._claim_for(announcement, slots)
                    if isinstance(reply, model.ClaimGrant):
                        await self._execute_all(reply, slots, announcement.origin_addr)
                        return
                finally:
                    for slot in slots:
                        self._limiter.release_on_behalf_of(slot)
                if reply is None:
                    return
                await trio.sleep(reply)  # the origin's retry back-off: a timer, not a sync
        except Exception:  # one job's unforeseen failure must not stop the node; its lease lapses
            log.exception("worker failed on job %s", job_id)
        finally:
            if self._considering.get(job_id) is candidate:
                del self._considering[job_id]
            turn = self._turns.get(origin)
            if turn is not None and not turn.locked() and not turn.statistics().tasks_waiting:
                del self._turns[origin]

    async def _claim_for(
        self, announcement: JobAnnounced, slots: list[object]
    ) -> model.ClaimGrant | float | None:
        """Claim with the `slots` taken; on a grant, keep as many slots as jobs came (they are
        `running` before anyone waiting for the worker to settle wakes), give back the rest."""
        self._claiming += 1
        reply: model.ClaimGrant | float | None = None
        try:
            reply = await self._claim(announcement, len(slots) - 1)
            if isinstance(reply, model.ClaimGrant):
                self.running.add(reply.job.id)
                self.running.update(more.job.id for more in reply.more)
        finally:
            self._claiming -= 1
            self._settle()
            keep = 1 + len(reply.more) if isinstance(reply, model.ClaimGrant) else 0
            for slot in slots[keep:]:
                self._limiter.release_on_behalf_of(slot)
            del slots[keep:]
        return reply

    def heard(self, job_id: str) -> None:
        """The job was announced (again): a `consider` call queued for it must not take it for
        stale, since it may be pending again."""
        if (candidate := self._considering.get(job_id)) is not None:
            candidate.heard = trio.current_time()

    def stop_run(self, job_id: str, origin: NodeId) -> bool:
        """Abandon a running job because its origin says so (a cancel); anyone else is ignored."""
        run = self._runs.get(job_id)
        if run is None or run[0] != origin:
            return False
        run[1].cancel()
        return True

    def _spare_slots(self) -> list[object]:
        """The free slots besides the one a claim holds, each taken for a further job the claim
        may be granted."""
        slots: list[object] = []
        while len(slots) < model.MAX_MORE_GRANTS and self._limiter.available_tokens:
            slot = object()
            self._limiter.acquire_on_behalf_of_nowait(slot)
            slots.append(slot)
        return slots

    async def _execute_all(
        self, grant: model.ClaimGrant, slots: list[object], origin: PeerAddr
    ) -> None:
        """Run the granted jobs, each in one of `slots`, and in each slot the jobs granted with
        the reports of those before; a slot is given back when no job came."""

        async def in_slot(job: model.Job, token: LeaseToken, slot: object) -> None:
            lease_s = grant.lease_expires_in
            try:
                while after := await self._execute(job, token, lease_s, origin):
                    job, token, lease_s = after.job, after.lease_token, after.lease_expires_in
            finally:
                slots.remove(slot)
                self._limiter.release_on_behalf_of(slot)

        granted = [(grant.job, grant.lease_token), *((m.job, m.lease_token) for m in grant.more)]
        async with trio.open_nursery() as nursery:
            for (job, token), slot in zip(granted, list(slots), strict=True):
                nursery.start_soon(in_slot, job, token, slot)

    async def _claim(
        self, announcement: JobAnnounced, more: int
    ) -> model.ClaimGrant | float | None:
        """A grant (of this job, or of another one of its origin's when this one is taken, and
        up to `more` further ones), the seconds to wait before asking again, or None: give up on
        this job."""
        request = model.ClaimRequest(
            job_id=announcement.job.id,
            worker=self.id,
            start=True,
            instead=sorted(self.executors),
            more=more,
        )
        asked = trio.current_time()
        try:
            reply = await self._control.ask(announcement.origin_addr, request)
        except ControlError as exc:
            log.info("cannot claim %s: %s", announcement.job.id, exc)
            self._metrics.claims.labels("unreachable").inc()
            return None
        if isinstance(reply, model.ClaimGrant):
            del reply.more[more:]  # only what there are slots for; the rest lapses
            self._metrics.claims.labels("granted").inc(1 + len(reply.more))
            return reply
        if isinstance(reply, model.ClaimRefused) and reply.retry_after is not None:
            self._metrics.claims.labels("backoff").inc()
            return reply.retry_after
        if isinstance(reply, model.ClaimRefused) and reply.none_pending:
            origin = announcement.job.origin
            self._none_pending[origin] = max(asked, self._none_pending.get(origin, asked))
        self._metrics.claims.labels("refused").inc()
        log.debug(
            "claim of %s refused: %s", announcement.job.id, getattr(reply, "reason", reply.type)
        )
        return None

    async def _execute(
        self, job: model.Job, token: LeaseToken, lease_s: float, origin: PeerAddr
    ) -> model.ClaimGrant | None:
        """Run a granted job and report it; returns the job granted for its slot with the
        report's acknowledgement, if any (it is `running` from then on)."""
        after = None
        log.info("running job %s (attempt %d) for %s", job.id, job.attempts, job.origin[:10])
        self.running.add(job.id)
        workdir = self._workdir(f"{job.id}-{job.attempts}")
        try:
            with trio.CancelScope() as stopped:  # lease lost, or the origin cancelled the job
                self._runs[job.id] = (job.origin, stopped)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keep_lease, job, token, origin, lease_s, stopped)
                    with self._metrics.run_seconds.time():
                        result = await self._run(job, token, origin, workdir)
                    result, outputs = await self._finish(job, result)
                    nursery.cancel_scope.cancel()
            if stopped.cancelled_caught:
                if job.id not in self._handing_back:
                    log.warning("job %s was cancelled or its lease lost; abandoned the run", job.id)
                    self._metrics.attempts.labels("abandoned").inc()
                return None
            self._metrics.attempts.labels("succeeded" if result.ok else "failed").inc()
            self.executed += 1
            # From here a retry of this job (announced as our report lands) is a new candidate.
            self._considering.pop(job.id, None)
            report = model.Report(
                job_id=job.id,
                lease_token=token,
                ok=result.ok,
                result=result.result,
                error=result.error,
                logs=result.logs,
                outputs=outputs,
                compile_note=result.compile_note,
                next=None if self.draining else sorted(self.executors),
            )
            reply = await self._control.ask(origin, report)
            if isinstance(reply, model.ReportAck) and reply.grant is not None:
                after = reply.grant
                self.running.add(after.job.id)
                self._metrics.claims.labels("granted").inc()
            if result.ok:
                self.succeeded += 1
            else:
                self.failed += 1
            if not isinstance(reply, model.ReportAck):
                log.warning(
                    "origin refused the report of job %s: %s",
                    job.id,
                    getattr(reply, "reason", reply.type),
                )
        except ControlError as exc:
            log.warning("could not report job %s: %s", job.id, exc)
        finally:
            # Handed back on request (a drain), or the node is stopping: give the job back.
            if job.id in self._handing_back or trio.current_effective_deadline() == -math.inf:
                with trio.CancelScope(
                    deadline=trio.current_time() + RELEASE_TIMEOUT_S, shield=True
                ):
                    await self._release(job, token, origin)
            self._runs.pop(job.id, None)
            self._handing_back.discard(job.id)
            self.running.discard(job.id)
            self._settle()
            with trio.CancelScope(shield=True):  # off the event loop; done when stopping too
                spare = await trio.to_thread.run_sync(_recycle, workdir)
            if spare is not None and len(self._spare) < SPARE_FOLDERS:
                self._spare.append(spare)
            elif spare is not None:
                await trio.to_thread.run_sync(shutil.rmtree, spare, True)
        return after

    def _workdir(self, name: str) -> Path:
        """A job's folder under the work folder: an emptied one of an earlier run when there is
        one (renamed: one call, where making and removing its folders cost a dozen, ~30 us of
        CPU each here), else a new name whose folders are made as they are needed."""
        workdir = self._work_dir / name
        while self._spare:
            try:
                self._spare.pop().rename(workdir)
            except OSError:
                continue  # gone, or the name is taken: a job's folder is made afresh then
            return workdir
        return workdir

    async def _release(self, job: model.Job, token: LeaseToken, origin: PeerAddr) -> None:
        try:
            reply = await self._control.ask(origin, model.Release(job_id=job.id, lease_token=token))
        except ControlError as exc:
            log.warning("could not hand job %s back, its lease will lapse: %s", job.id, exc)
            return
        if isinstance(reply, model.Ack):
            log.info("handed job %s back to its origin", job.id)

    async def _finish(
        self, job: model.Job, result: ExecutionResult
    ) -> tuple[ExecutionResult, dict[str, model.BlobRef]]:
        """Store the outputs and bound the result: what is reported is always reportable."""
        if result.ok and (size := model.json_size(result.result)) > model.MAX_RESULT_BYTES:
            message = (
                f"result of {size} bytes exceeds {model.MAX_RESULT_BYTES}: write large data to /out"
            )
            return ExecutionResult.failure(message, result.logs), {}
        try:
            return result, await self._store_outputs(job, result)
        except StoreError as exc:
            return ExecutionResult.failure(f"could not store the outputs: {exc}", result.logs), {}

    async def _keep_lease(
        self,
        job: model.Job,
        token: LeaseToken,
        origin: PeerAddr,
        lease_s: float,
        stopped: trio.CancelScope,
    ) -> None:
        """Renew until the origin refuses; an origin that does not answer is retried, not given
        up on. The claim started the job, so the first renewal is a third of the lease away."""
        request = model.Renew(job_id=job.id, lease_token=token)
        reply: model.ControlMessage = model.RenewOk(expires_in=lease_s)
        while isinstance(reply, model.RenewOk):
            await trio.sleep(reply.expires_in / 3)
            try:
                reply = await self._control.ask(origin, request)
            except ControlError as exc:
                log.info("lease renewal of %s failed, retrying: %s", job.id, exc)
                reply = model.RenewOk(expires_in=lease_s)
        stopped.cancel()

    async def _run(
        self, job: model.Job, token: LeaseToken, origin: PeerAddr, workdir: Path
    ) -> ExecutionResult:
        spec = job.spec
        # The folders are made where needed, off the event loop: by the executor (in, out and its
        # own), and by whatever places a file in them.
        inputs, outputs = workdir / "in", workdir / "out"
        module_path = workdir / "module.wasm"
        job_input, stdin = spec.input, None
        executor = self.executors[spec.requirements.executor]
        try:
            if not executor.has_module(spec.module.hash):
                await self._materialize(spec.module, origin, module_path)
            for name, ref in spec.artifacts.items():
                await self._materialize(ref, origin, inputs / name)
            mounts = await self._mount(spec, origin, inputs, workdir / "mounts")
            if spec.command is not None and spec.command.stdin is not None:
                stdin = workdir / "stdin"
                await self._materialize(spec.command.stdin, origin, stdin)
            if spec.input_blob is not None:
                input_path = workdir / "input.json"
                await self._materialize(spec.input_blob, origin, input_path)
                job_input = await trio.to_thread.run_sync(
                    lambda: json.loads(input_path.read_bytes())
                )
        except (FetchError, StoreError) as exc:
            return ExecutionResult.failure(f"could not fetch job inputs: {exc}")
        except _BadManifest as exc:
            return ExecutionResult.failure(str(exc))
        except ValueError as exc:
            return ExecutionResult.failure(f"the job input blob is not JSON: {exc}")
        request = spec.to_request(
            module=module_path,
            input=job_input,
            stdin=stdin,
            mounts=mounts,
            artifacts_dir=inputs,
            output_dir=outputs,
            scratch_dir=workdir / "scratch",
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_logs, job.id, token, origin, request.streams_dir)
            result = await executor.run(request)
            nursery.cancel_scope.cancel()
        return result

    async def _send_logs(
        self, job_id: str, token: LeaseToken, origin: PeerAddr, streams: Path
    ) -> None:
        """Send the origin what the run writes, until it ends or the origin refuses."""
        offsets = dict.fromkeys(get_args(model.LogStream), 0)
        while True:
            await trio.sleep(LOG_INTERVAL_S)  # a rate limit, not a synchronisation
            for stream, offset in offsets.items():
                data = await trio.to_thread.run_sync(_read_chunk, streams / stream, offset)
                if not data:
                    continue
                offsets[stream] += len(data)
                chunk = model.LogChunk(
                    job_id=job_id,
                    lease_token=token,
                    stream=stream,
                    offset=offset,
                    size=len(data),
                    text=data.decode("utf-8", errors="replace"),
                )
                try:
                    reply = await self._control.ask(origin, chunk)
                except ControlError as exc:  # lost: live logs are best effort
                    log.debug("could not send output of job %s: %s", job_id, exc)
                    continue
                if not isinstance(reply, model.Ack):
                    return

    async def _mount(
        self, spec: model.JobSpec, origin: PeerAddr, inputs: Path, root: Path
    ) -> dict[str, Path]:
        """Place each mount's files, and return the folders to preopen by guest path: a mount
        inside /in lands in the artifacts folder, any other in a folder of its own (a file's is
        its parent folder, shared by files mounted side by side)."""
        preopens: dict[str, Path] = {}
        for name, mount in spec.mounts.items():
            target = PurePosixPath(spec.guest_path(name))
            if target.is_relative_to("/in"):
                dest = inputs / target.relative_to("/in")
            else:
                folder = str(target if mount.directory else target.parent)
                host = preopens.setdefault(folder, root / str(len(preopens)))
                dest = host if mount.directory else host / target.name
            if not mount.directory:
                await self._materialize(mount.source, origin, dest)
                continue
            listing = root / f"{name}.manifest"
            if mount.source.size > model.MAX_MANIFEST_BYTES:
                raise _BadManifest(f"the manifest of mount {name!r} is over its size limit")
            await self._materialize(mount.source, origin, listing)
            try:
                manifest = model.Manifest.model_validate_json(
                    await trio.to_thread.run_sync(listing.read_bytes)
                )
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                raise _BadManifest(f"the manifest of mount {name!r} is invalid: {reason}") from None
            await trio.to_thread.run_sync(_make_dirs, dest)  # an empty folder mounts too
            for entry in manifest.files:
                ref = model.BlobRef(
                    hash=entry.hash,
                    size=entry.size,
                    root=entry.root,
                    providers=mount.source.providers,
                )
                await self._materialize(ref, origin, dest / entry.path)
        return preopens

    async def _materialize(self, ref: model.BlobRef, origin: PeerAddr, dest: Path) -> None:
        await self._blobs.materialize(
            ref.hash, provider_addrs(ref, self._resolve, first=origin), dest, root=ref.root
        )

    async def _store_outputs(
        self, job: model.Job, result: ExecutionResult
    ) -> dict[str, model.BlobRef]:
        """Held by the job's tags until the origin's retention would have removed the job."""
        refs: dict[str, model.BlobRef] = {}
        for name, path in result.outputs.items():
            tag = model.job_tag(job.id, f"output/{name}")
            info = await self._blobs.add(path, pin=False, tag=tag)
            refs[name] = model.BlobRef.held_by(info, self.id)
        return refs


SPARE_FOLDERS = 64
"""Emptied work folders kept for later runs (a few per slot)."""
SPARE_PREFIX = ".spare-"
_KEPT: dict[str, Any] = {"in": {}, "out": {}, "scratch": {"streams": {}}}
"""The folders of a run's folder that stay when it is emptied for the next (see `_Run`'s and
`ExecutionRequest`'s layout): everything else in it goes."""


def _recycle(workdir: Path) -> Path | None:
    """Empty a finished run's folder down to its skeleton and rename it for a later run (blocking;
    the next job never sees a thing of this one's: every file and foreign folder is removed).
    None when that fails: it is removed whole."""
    try:
        _empty(workdir, _KEPT)
        spare = workdir.with_name(f"{SPARE_PREFIX}{secrets.token_hex(8)}")
        workdir.rename(spare)
        return spare
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)
        return None


def _empty(folder: Path, kept: dict[str, Any]) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)  # files and symlinks (never followed)
            elif entry.name in kept:
                _empty(Path(entry.path), kept[entry.name])
            else:
                shutil.rmtree(entry.path)


def _make_dirs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _read_chunk(path: Path, offset: int) -> bytes:
    """Up to `model.MAX_LOG_CHUNK` bytes of a growing file from `offset`, ending between UTF-8
    characters (a character cut off is sent whole with the next chunk); b"" if none yet."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(model.MAX_LOG_CHUNK)
    except FileNotFoundError:
        return b""
    return data[: _whole_chars(data)]


def _whole_chars(data: bytes) -> int:
    """The length of `data` without a UTF-8 sequence that its end cuts short."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: where the last sequence starts
            wanted = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            cut = byte >= 0xC0 and byte < 0xF8 and back < wanted
            return len(data) - back if cut else len(data)
    return len(data)
