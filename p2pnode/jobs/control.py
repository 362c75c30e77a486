"""The jobs control protocol: a worker asks a job's origin for claims, lease renewals and reports.

Members only (the router enforces it). A request frame, then its reply frame, on a bi stream,
and the next request on the same stream: a worker keeps its streams to an origin open (one per
request in flight) and the origin answers on each until the worker finishes it (an older worker
sends one request per stream, and an older origin ends each stream after one reply: a worker
then asks again on a new stream). The origin checks that the worker named in a claim is the
authenticated peer, so nobody can claim on another node's behalf. While a job runs, its lease
holder also sends `LogChunk`s of its output, checked like a report (the peer holds the lease, the
token is live). The one message in the other direction, `StopRun`, goes from an origin to the
worker running a job it cancelled; the worker obeys only the job's origin.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Protocol

import iroh
import trio
from pydantic import TypeAdapter, ValidationError

from p2pnode.ids import NodeId
from p2pnode.jobs import model
from p2pnode.jobs.store import ClaimRefused, JobStore, Refused
from p2pnode.net.addr import PeerAddr, remote_node_id
from p2pnode.net.dialer import PEER_ERRORS, describe
from p2pnode.net.framing import FRAME_TIMEOUT_S, FrameError, FrameReader, send_model

JOBS_ALPN = b"p2pnode/jobs/2"
STREAM_IDLE_S = 60.0
"""An origin ends a kept stream no request used for this long: the streams a member leaves
idle must not pile up (its worker asks on a fresh one next time)."""
MAX_CONTROL_FRAME = 4 << 20
"""Fits a report: a result of up to `MAX_RESULT_BYTES`, logs, an error and output references."""
CLAIM_CANDIDATES = 8
"""Claimable jobs tried, oldest first, for a worker whose job was taken."""
MORE_GRANTED_BYTES = 1 << 20
"""Records a claim's further grants carry at most (a job's record is at most ~0.5 MiB, so a
grant stays well inside `MAX_CONTROL_FRAME`)."""
STREAMS_KEPT = 16
"""Idle streams a worker keeps open to one origin (as many as it had requests in flight)."""
REQUESTS_REMEMBERED = 4096
"""Applied requests whose outcome the origin keeps for a repeat (a retry follows at once)."""

control_message: TypeAdapter[model.ControlMessage] = TypeAdapter(model.ControlMessage)


Exchange = Callable[[iroh.Connection], Awaitable[model.ControlMessage]]


class Requester(Protocol):
    """`Dialer.request`: run an exchange with a peer, on a fresh connection again if it fails."""

    def __call__(
        self, addr: PeerAddr, alpn: bytes, exchange: Exchange, *, idempotent: bool
    ) -> Awaitable[model.ControlMessage]: ...


class ControlError(Exception):
    """The origin could not be asked, or answered something that makes no sense."""


Admit = Callable[[NodeId, model.Job], None]
"""Whether worker `str` may claim a pending job now: returns, or raises `ClaimRefused`."""


class ControlServer:
    """Origin side, plus `StopRun` for the local worker. `on_change` runs after every recorded
    change (announce, gossip completion, fetch outputs); `stop_run(job_id, origin)` stops a run;
    `on_log(job, chunk)` takes the live output of a job from its lease holder; `admit` places
    jobs: the origin decides who may claim, whatever the worker checked itself."""

    def __init__(
        self,
        store: JobStore,
        lease_s: float,
        on_change: Callable[[model.Job], Awaitable[None]],
        stop_run: Callable[[str, NodeId], object],
        on_log: Callable[[model.Job, model.LogChunk], None],
        admit: Admit,
    ) -> None:
        self._store = store
        self._lease_s = lease_s
        self._on_change = on_change
        self._stop_run = stop_run
        self._on_log = on_log
        self._admit = admit
        self._applied: OrderedDict[tuple[NodeId, str], tuple[str, ...] | model.ControlMessage] = (
            OrderedDict()
        )
        """(peer, request id) -> the jobs a claim granted (a report's: after "", the mark of a
        report), or the reply to a release or log chunk (kept once, not shown twice)"""

    async def handle_stream(self, connection: iroh.Connection, bi: iroh.BiStream) -> None:
        """Answer the requests on the stream in turn until the peer finishes it, or leaves it
        idle for `STREAM_IDLE_S`."""
        peer = remote_node_id(connection)
        frames = FrameReader(bi.recv(), MAX_CONTROL_FRAME)
        send = bi.send()
        while True:
            frame = None
            with trio.move_on_after(STREAM_IDLE_S):
                frame = await frames.next()
            if frame is None:  # finished by the peer, or idle (the scope was cancelled)
                break
            await send_model(send, await self.answer(peer, _parse(frame)))
        with suppress(iroh.IrohError):  # the peer may be gone already
            await send.finish()

    async def answer(self, peer: NodeId, request: model.ControlMessage) -> model.ControlMessage:
        store = self._store
        if isinstance(request, model.ClaimRequest | model.Report | model.Release | model.LogChunk):
            if (again := self._repeat(peer, request.request_id)) is not None:
                return again
        try:
            if isinstance(request, model.ClaimRequest):
                if request.worker != peer:
                    return model.ClaimRefused(reason="a worker can only claim for itself")
                with store.transaction():  # every job granted: one commit
                    try:
                        job = self._claim(request.job_id, peer, request.start)
                    except ClaimRefused as exc:
                        if exc.retry_after is not None or request.instead is None:
                            raise
                        job = self._claim_instead(request, peer, exc.reason)
                    more = self._claim_more(
                        request.instead, request.more, peer, job.origin, request.start
                    )
                self._applied_now(peer, request, (job.id, *(j.id for j in more)))
                for changed in (job, *more):
                    await self._on_change(changed)
                return _grant([job, *more], self._lease_s)
            if isinstance(request, model.Renew):
                store.renew(request.job_id, request.lease_token, self._lease_s, worker=peer)
                return model.RenewOk(expires_in=self._lease_s)
            if isinstance(request, model.Started):
                job = store.mark_running(request.job_id, request.lease_token, worker=peer)
                await self._on_change(job)
                return model.RenewOk(expires_in=self._lease_s)
            if isinstance(request, model.Report):
                with store.transaction():  # the report and the next job's claim: one commit
                    job = store.complete(
                        request.job_id,
                        request.lease_token,
                        request.ok,
                        request.result,
                        request.error,
                        request.logs,
                        request.outputs,
                        request.compile_note,
                        worker=peer,
                    )
                    after = self._claim_more(request.next, 1, peer, job.origin)
                self._applied_now(peer, request, ("", *(j.id for j in after)))
                for changed in (job, *after):
                    await self._on_change(changed)
                return model.ReportAck(grant=_grant(after, self._lease_s) if after else None)
            if isinstance(request, model.Release):
                job = store.release(request.job_id, request.lease_token, worker=peer)
                self._applied_now(peer, request, model.Ack())
                await self._on_change(job)
                return model.Ack()
            if isinstance(request, model.LogChunk):
                leased = store.leased(request.job_id, request.lease_token, worker=peer)
                self._on_log(leased, request)
                self._applied_now(peer, request, model.Ack())
                return model.Ack()
            if isinstance(request, model.StopRun):
                self._stop_run(request.job_id, peer)
                return model.Ack()
        except Refused as exc:
            if isinstance(request, model.ClaimRequest):
                if isinstance(exc, ClaimRefused):
                    return model.ClaimRefused(
                        reason=exc.reason,
                        retry_after=exc.retry_after,
                        none_pending=exc.none_pending,
                    )
                return model.ClaimRefused(reason=exc.reason)
            if isinstance(request, model.Report):
                return model.ReportRefused(reason=exc.reason)
            return model.RenewRefused(reason=exc.reason)
        return model.RenewRefused(reason=f"unexpected request {request.type}")

    def _applied_now(
        self,
        peer: NodeId,
        request: model.ClaimRequest | model.Report | model.Release | model.LogChunk,
        outcome: tuple[str, ...] | model.ControlMessage,
    ) -> None:
        """Remember what a request did (before any await, so a repeat racing it finds it)."""
        self._applied[(peer, request.request_id)] = outcome
        while len(self._applied) > REQUESTS_REMEMBERED:
            self._applied.popitem(last=False)

    def _repeat(self, peer: NodeId, request_id: str) -> model.ControlMessage | None:
        """The answer to a request this peer sent before and we applied: the same reply, or for
        a claim the same lease while it lasts. None: new to us (or its lease is over), apply it."""
        outcome = self._applied.get((peer, request_id))
        if not isinstance(outcome, tuple):
            return outcome
        if outcome[:1] == ("",):  # a report: applied; and the job granted after it, if any
            again = self._regrant(peer, outcome[1:])
            return model.ReportAck(grant=again)
        return self._regrant(peer, outcome)

    def _regrant(self, peer: NodeId, granted: tuple[str, ...]) -> model.ClaimGrant | None:
        """The same grant again, of the jobs still leased to `peer` (None if none is)."""
        now = self._store.now()
        leased = [
            job
            for job_id in granted
            if (job := self._store.get(job_id)) is not None
            and not job.state.terminal
            and job.lease is not None
            and job.lease.worker == peer
            and job.lease.expires_at > now
        ]
        if not leased:
            return None
        assert leased[0].lease is not None
        return _grant(leased, leased[0].lease.expires_at - now)

    def _claim(self, job_id: str, peer: NodeId, start: bool) -> model.Job:
        """Claim as placement allows: the origin decides who may claim, whatever the worker
        checked itself."""
        return self._store.claim(
            job_id, peer, self._lease_s, start=start, admit=lambda job: self._admit(peer, job)
        )

    def _claim_instead(self, request: model.ClaimRequest, peer: NodeId, reason: str) -> model.Job:
        """The oldest claimable job the worker can run and placement lets it have, claimed the
        same way as the one it asked for; refused with `none_pending` when nothing at all waits
        here."""
        assert request.instead is not None
        store = self._store
        if (asked := store.get(request.job_id)) is None:
            raise ClaimRefused(reason)
        origin = asked.origin
        for job_id, _ in store.claimable_ids(request.instead, CLAIM_CANDIDATES, origin=origin):
            try:
                return self._claim(job_id, peer, request.start)
            except ClaimRefused:
                continue
        idle = not store.list(model.JobState.PENDING, 1, origin=origin)
        raise ClaimRefused(reason, none_pending=idle)

    def _claim_more(
        self,
        executors: Sequence[str] | None,
        count: int,
        peer: NodeId,
        origin: NodeId,
        start: bool = True,
    ) -> list[model.Job]:
        """Up to `count` further jobs of `executors` for the worker's free slots, oldest first,
        claimed like any, in at most `MORE_GRANTED_BYTES` of records (so the grant
        fits a frame)."""
        if not count or executors is None:
            return []
        granted: list[model.Job] = []
        size = 0
        for job_id, record in self._store.claimable_ids(
            executors, count + CLAIM_CANDIDATES, origin=origin
        ):
            if len(granted) == count or size + record > MORE_GRANTED_BYTES:
                break
            try:
                granted.append(self._claim(job_id, peer, start))
            except ClaimRefused:
                continue
            size += record
        return granted


def _grant(jobs: list[model.Job], lease_s: float) -> model.ClaimGrant:
    """One grant of leased jobs: the first, and the others as `more`."""
    first, *more = jobs
    assert first.lease is not None and all(job.lease is not None for job in more)
    return model.ClaimGrant(
        job=first,
        lease_token=first.lease.token,
        lease_expires_in=lease_s,
        more=[model.Granted(job=job, lease_token=job.lease.token) for job in more if job.lease],
    )


class StreamEnded(FrameError):
    """The origin ended a kept stream (idle too long, or an older origin that ends each stream
    after its reply): ask again on another. Other frame errors (no answer in time, a malformed
    reply) are the origin's state, and asking it on every idle stream in turn would only wait
    longer."""


def _parse(frame: bytes) -> model.ControlMessage:
    try:
        return control_message.validate_json(frame)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "top level"
        raise FrameError(f"malformed message: {first['msg']} at {where}") from None


class _Channel:
    """A bi stream to an origin carrying one request and its reply at a time, kept for the next
    (opening a stream and finishing it cost more bindings calls than the exchange itself)."""

    def __init__(self, connection: iroh.Connection, bi: iroh.BiStream) -> None:
        self.connection = connection
        self.bi = bi
        self.send = bi.send()
        self.frames = FrameReader(bi.recv(), MAX_CONTROL_FRAME)
        self.idle_since = trio.current_time()

    async def exchange(self, request: model.ControlMessage) -> model.ControlMessage:
        await send_model(self.send, request)
        with trio.move_on_after(FRAME_TIMEOUT_S):
            frame = await self.frames.next()
            if frame is None:
                raise StreamEnded("the origin ended the stream")
            return _parse(frame)
        raise FrameError(f"no answer within {FRAME_TIMEOUT_S:g} s")

    async def close(self) -> None:
        """Finish our side (the origin's loop then ends cleanly), even when cancelled."""
        with trio.CancelScope(shield=True), suppress(iroh.IrohError):
            await self.send.finish()


class ControlClient:
    """Worker side: one request, one reply, on a cached connection to the origin (`Dialer.request`:
    a connection that fails is replaced at once), on a stream kept open for the next request.
    Every request is idempotent (a `_Once` carries a request id the origin answers a repeat of
    with what it did the first time; renewing, starting and stopping twice is doing it once), so
    one is sent again when a kept stream turns out ended, and also when a freshly dialled
    connection dies under it: otherwise a claim the origin applied would hold the job until its
    lease lapsed."""

    def __init__(self, request: Requester) -> None:
        self._request = request
        self._local: tuple[NodeId, ControlServer] | None = None
        self._idle: dict[NodeId, list[_Channel]] = {}
        """origin -> its streams that no request uses now (of the current connection)"""

    def answer_locally(self, node_id: NodeId, server: ControlServer) -> None:
        """A node claiming its own job asks its own origin side directly instead of dialling
        itself."""
        self._local = (node_id, server)

    async def ask(self, origin: PeerAddr, request: model.ControlMessage) -> model.ControlMessage:
        if self._local is not None and origin.node_id == self._local[0]:
            return await self._local[1].answer(self._local[0], request)

        async def exchange(connection: iroh.Connection) -> model.ControlMessage:
            while (channel := self._take(origin.node_id, connection)) is not None:
                try:
                    return await self._over(origin.node_id, channel, request)
                except (iroh.IrohError, StreamEnded):
                    continue  # ended while it idled (an older origin ends each after a reply)
            channel = _Channel(connection, await connection.open_bi())
            return await self._over(origin.node_id, channel, request)

        try:
            return await self._request(origin, JOBS_ALPN, exchange, idempotent=True)
        except PEER_ERRORS as exc:
            raise ControlError(
                f"origin {origin.node_id[:10]} did not answer: {describe(exc)}"
            ) from None

    def _take(self, origin: NodeId, connection: iroh.Connection) -> _Channel | None:
        """An idle stream on `connection`; those of a connection since replaced, and those idle
        long enough for the origin to have ended them (`STREAM_IDLE_S`), are dropped."""
        idle = self._idle.get(origin, [])
        fresh_since = trio.current_time() - STREAM_IDLE_S / 2
        while idle:
            channel = idle.pop()
            if channel.connection is connection and channel.idle_since > fresh_since:
                return channel
        return None

    async def _over(
        self, origin: NodeId, channel: _Channel, request: model.ControlMessage
    ) -> model.ControlMessage:
        """The request's reply on `channel`, which is kept for the next request only after a
        whole exchange (a stream left mid-exchange could deliver a stale reply later)."""
        try:
            reply = await channel.exchange(request)
        except BaseException:
            await channel.close()
            raise
        idle = self._idle.setdefault(origin, [])
        if len(idle) < STREAMS_KEPT:
            channel.idle_since = trio.current_time()
            idle.append(channel)
        else:
            await channel.close()
        return reply
