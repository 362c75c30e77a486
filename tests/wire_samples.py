"""Golden wire samples: the form every peer-facing message has on the wire today, one file each
under tests/data/wire/, built here from the code with fixed values.

JSON is written indented (what a reader parses is the same; a diff shows the field that moved).
tests/test_compat_wire.py parses every committed file with today's readers, so a change that
would break a node of an earlier version fails CI. After a wire change that is meant (an
additive field, a message under a bumped ALPN), regenerate them with one command and commit the
difference:

    .venv/bin/python tests/wire_samples.py --write
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import iroh
from pydantic import BaseModel

import tickets
from p2pnode.blobs.blocks import BlockList
from p2pnode.blobs.protocol import BlobHeader, BlobRefused, BlobReply, BlobRequest
from p2pnode.gossip import wire
from p2pnode.gossip.envelope import Envelope, Signer
from p2pnode.ids import NodeId
from p2pnode.jobs import model
from p2pnode.jobs.announcements import JobAnnounced, JobFinished, JobsAnnounced
from p2pnode.jobs.control import control_message
from p2pnode.jobs.heartbeat import ExecutorOffer, Heartbeat
from p2pnode.membership import (
    JoinChallenge,
    JoinProof,
    JoinRefused,
    JoinRequest,
    JoinWelcome,
    ServerReply,
)
from p2pnode.net.addr import PeerAddr

WIRE_DIR = Path(__file__).parent / "data" / "wire"

SECRET = iroh.SecretKey.from_bytes(bytes(range(32)))
"""The key that signs the sample envelope (Ed25519 signatures are deterministic)."""
ORIGIN = NodeId(SECRET.public().to_bytes().hex())
WORKER = NodeId("b0" * 32)
HASH = "c1" * 32
ROOT = "d2" * 32
JOB_ID = "job_01M8CRH8D5H83H6EVKWEVXEHTJ"
OTHER_JOB_ID = "job_01M8CRH8D5H83H6EVKWEVXEHTK"
TOKEN = "e3" * 16
REQUEST_ID = "f4" * 16
ENVELOPE_ID = "a5" * 16
AT = 1_764_000_000.0
ADDR = PeerAddr(node_id=ORIGIN, relay_url=None, direct_addresses=["127.0.0.1:4433"])


def _ref(**extra: Any) -> dict[str, Any]:
    return {"hash": HASH, "size": 12, "root": ROOT, "providers": [ORIGIN], **extra}


def _spec() -> dict[str, Any]:
    """A job spec using every part of one: command, artifacts, mounts, requirements."""
    return {
        "workflow": None,
        "module": _ref(),
        "input": None,
        "input_blob": _ref(),
        "artifacts": {"text": _ref()},
        "command": {"argv": ["prog.wasm", "-n", "5"], "env": {"LANG": "C"}, "stdin": _ref()},
        "mounts": {"tree": {"source": _ref(), "directory": True, "guest_path": "/srv/tree"}},
        "requirements": {
            "executor": "wasi",
            "limits": {"time_s": 60.0, "memory_bytes": 268435456, "fuel": 10**12},
            "labels": [
                {"key": "gpu", "op": "=", "value": "yes"},
                {"key": "arch", "op": "!=", "value": "arm64"},
                {"key": "ssd", "op": "present", "value": None},
            ],
        },
        "max_attempts": 3,
    }


def _job(job_id: str = JOB_ID) -> model.Job:
    return model.Job.model_validate(
        {
            "id": job_id,
            "origin": ORIGIN,
            "spec": _spec(),
            "state": "claimed",
            "attempts": 1,
            "lease": {"worker": WORKER, "token": TOKEN, "expires_at": AT + 15},
            "not_before": 0.0,
            "result": {"words": 3},
            "error": None,
            "outputs": {"sub/out.txt": _ref()},
            "logs": "done\n",
            "worker": WORKER,
            "created_at": AT,
            "updated_at": AT + 1,
            "finished_at": None,
            "history": [{"at": AT, "state": "pending", "note": "submitted"}],
        }
    )


def _envelope() -> Envelope:
    """A heartbeat, signed; its random id replaced by a fixed one (and signed again)."""
    payload = _heartbeat().model_dump(mode="json")
    made = Envelope.create(SECRET, "0f" * 16, Heartbeat.KIND, payload, hops=32, now=AT)
    body = bytes.fromhex(ENVELOPE_ID) + made.body[len(ENVELOPE_ID) // 2 :]
    return Envelope(signature=Signer(SECRET).sign(body), body=body, hops=32)


def _heartbeat() -> Heartbeat:
    return Heartbeat(
        node_id=ORIGIN,
        sent_at=AT,
        executors=[
            ExecutorOffer(kind="wasi", answers=True),
            ExecutorOffer(kind="flawless", answers=False),
        ],
        slots_total=4,
        slots_free=3,
        running=[JOB_ID],
        labels={"gpu": "yes"},
        draining=False,
        version="0.1.0",
        uptime_s=12.5,
    )


def _block_list() -> BlockList:
    return BlockList(size=(1 << 20) + 5, hashes=(bytes([1]) * 32, bytes([2]) * 32))


def _verify(raw: bytes) -> Envelope:
    """An envelope is only read if its signature holds: the signed form must not move."""
    message = wire.decode(raw)
    assert isinstance(message, wire.Gossip)
    message.envelope.verify()
    return message.envelope


def _header(header: BaseModel) -> BaseModel:
    assert isinstance(header, BlobHeader)
    BlockList.from_bytes(bytes.fromhex(header.block_list))
    return header


def _from_json(read: Callable[[Any], BaseModel]) -> Callable[[bytes], BaseModel]:
    """A payload carried inside an envelope: the receiver validates the parsed dict."""
    return lambda raw: read(json.loads(raw))


@dataclass(frozen=True)
class Sample:
    """One message as a peer sends it, and how the receiving node reads it."""

    build: Callable[[], BaseModel | str | bytes]
    read: Callable[[bytes], Any]
    binary: bool = False
    """Bytes with a fixed layout (gossip's broadcast frames): no field can be added to them
    without an ALPN bump, so they are compared byte for byte."""

    def encode(self) -> bytes:
        message = self.build()
        if isinstance(message, bytes):
            return message
        if isinstance(message, str):
            return message.encode() + b"\n"  # a ticket: text, as people paste it
        return json.dumps(json.loads(message.model_dump_json()), indent=1).encode() + b"\n"


def _control(build: Callable[[], BaseModel]) -> Sample:
    return Sample(build, control_message.validate_json)


def _membership(build: Callable[[], BaseModel]) -> Sample:
    """Gossip's membership messages: JSON after their type byte (the file holds the JSON)."""
    return Sample(build, lambda raw: wire.decode(bytes((wire.CONTROL,)) + raw))


def _frame(build: Callable[[], wire.WireMessage]) -> Sample:
    """A binary gossip frame, read back as the receiver reads it."""
    return Sample(lambda: wire.encode(build()), wire.decode, binary=True)


def _claim_grant() -> model.ClaimGrant:
    return model.ClaimGrant(
        job=_job(),
        lease_token=TOKEN,
        lease_expires_in=15.0,
        more=[model.Granted(job=_job(OTHER_JOB_ID), lease_token=TOKEN)],
    )


_PEER = {"id": WORKER, "addr": {"node_id": WORKER, "direct_addresses": ["127.0.0.1:4434"]}}
_JOIN_ADDR = {"node_id": ORIGIN, "relay_url": None, "direct_addresses": ["127.0.0.1:4433"]}

SAMPLES: dict[str, Sample] = {
    # p2pnode/jobs/2: the control protocol (model.ControlMessage)
    "jobs.claim_request": _control(
        lambda: model.ClaimRequest(
            request_id=REQUEST_ID,
            job_id=JOB_ID,
            worker=WORKER,
            start=True,
            instead=["wasi"],
            more=2,
        )
    ),
    "jobs.claim_grant": _control(_claim_grant),
    "jobs.claim_refused": _control(
        lambda: model.ClaimRefused(reason="backing off", retry_after=1.5, none_pending=False)
    ),
    "jobs.renew": _control(lambda: model.Renew(job_id=JOB_ID, lease_token=TOKEN)),
    "jobs.renew_ok": _control(lambda: model.RenewOk(expires_in=15.0)),
    "jobs.renew_refused": _control(lambda: model.RenewRefused(reason="lease lapsed")),
    "jobs.started": _control(lambda: model.Started(job_id=JOB_ID, lease_token=TOKEN)),
    "jobs.report": _control(
        lambda: model.Report(
            request_id=REQUEST_ID,
            job_id=JOB_ID,
            lease_token=TOKEN,
            ok=True,
            result={"words": 3},
            error=None,
            logs="done\n",
            outputs={"sub/out.txt": model.BlobRef.model_validate(_ref())},
            compile_note="compiled in 1.2 s",
            next=["wasi"],
        )
    ),
    "jobs.report_ack": _control(lambda: model.ReportAck(grant=_claim_grant())),
    "jobs.report_refused": _control(lambda: model.ReportRefused(reason="not your lease")),
    "jobs.release": _control(
        lambda: model.Release(request_id=REQUEST_ID, job_id=JOB_ID, lease_token=TOKEN)
    ),
    "jobs.stop_run": _control(lambda: model.StopRun(job_id=JOB_ID)),
    "jobs.ack": _control(model.Ack),
    "jobs.log_chunk": _control(
        lambda: model.LogChunk(
            request_id=REQUEST_ID,
            job_id=JOB_ID,
            lease_token=TOKEN,
            stream="stderr",
            offset=10,
            size=6,
            text="héllo",
        )
    ),
    # a folder mount's manifest: a blob one version writes and workers of any version read
    "jobs.manifest": Sample(
        lambda: model.Manifest(
            files=[model.ManifestEntry(path="sub/a.txt", hash=HASH, size=12, root=ROOT)]
        ),
        model.Manifest.model_validate_json,
    ),
    # p2pnode/gossip/2: frames between neighbors (gossip/wire.py): membership in JSON ...
    "gossip.join": _membership(lambda: wire.Join(addr=_JOIN_ADDR)),
    "gossip.forward_join": _membership(
        lambda: wire.ForwardJoin(peer=wire.PeerEntry.model_validate(_PEER), ttl=3)
    ),
    "gossip.neighbor": _membership(lambda: wire.Neighbor(addr=_JOIN_ADDR, urgent=True)),
    "gossip.leave": _membership(wire.Leave),
    "gossip.shuffle": _membership(
        lambda: wire.Shuffle(sample=[wire.PeerEntry.model_validate(_PEER)])
    ),
    "gossip.shuffle_reply": _membership(
        lambda: wire.ShuffleReply(sample=[wire.PeerEntry.model_validate(_PEER)])
    ),
    # ... and broadcast and catch-up in fixed binary layouts
    "gossip.gossip": _frame(lambda: wire.Gossip(envelope=_envelope(), catch_up=True)),
    "gossip.digest": _frame(lambda: wire.Digest(ids=[ENVELOPE_ID])),
    "gossip.want": _frame(lambda: wire.Want(ids=[ENVELOPE_ID])),
    "gossip.ihave": _frame(lambda: wire.IHave(ids=[ENVELOPE_ID])),
    "gossip.graft": _frame(lambda: wire.Graft(ids=[ENVELOPE_ID])),
    "gossip.prune": _frame(wire.Prune),
    "gossip.envelope": Sample(
        lambda: wire.encode(wire.Gossip(envelope=_envelope())), _verify, binary=True
    ),
    # what envelopes carry, by kind
    "payload.node.heartbeat": Sample(_heartbeat, _from_json(Heartbeat.model_validate)),
    "payload.job.announced": Sample(
        lambda: JobAnnounced(job=_job().summary(), origin_addr=ADDR, first=WORKER),
        _from_json(JobAnnounced.model_validate),
    ),
    "payload.job.announced.many": Sample(
        lambda: JobsAnnounced(
            jobs=[_job().summary(), _job(OTHER_JOB_ID).summary()],
            origin_addr=ADDR,
            first=[WORKER, None],
        ),
        _from_json(JobsAnnounced.model_validate),
    ),
    "payload.job.finished": Sample(
        lambda: JobFinished(job=_job().summary()), _from_json(JobFinished.model_validate)
    ),
    # p2pnode/join/1: the handshake (the host reads requests and proofs, the joiner the rest)
    "join.request": Sample(
        lambda: JoinRequest(cluster_id="0f" * 16, nonce="1e" * 16, addr=ADDR, session="2d" * 8),
        JoinRequest.model_validate_json,
    ),
    "join.challenge": Sample(lambda: JoinChallenge(nonce="3c" * 16), ServerReply.validate_json),
    "join.proof": Sample(lambda: JoinProof(proof="4b" * 32), JoinProof.model_validate_json),
    "join.welcome": Sample(
        lambda: JoinWelcome(proof="5a" * 32, members=[ADDR], session="69" * 8),
        ServerReply.validate_json,
    ),
    "join.refused": Sample(
        lambda: JoinRefused(reason="wrong cluster", retry_after=2.0), ServerReply.validate_json
    ),
    # p2pnode/blobs/1: a request frame, then a header (or refusal) frame before the raw blocks
    "blobs.request": Sample(
        lambda: BlobRequest(hash=HASH, capability="78" * 32, blocks=[(0, 1), (3, 5)]),
        BlobRequest.model_validate_json,
    ),
    "blobs.header": Sample(
        lambda: BlobHeader(size=_block_list().size, block_list=_block_list().to_bytes().hex()),
        lambda raw: _header(BlobReply.validate_json(raw)),
    ),
    "blobs.refused": Sample(
        lambda: BlobRefused(reason="not found"), lambda raw: BlobReply.validate_json(raw)
    ),
    # tickets: made by one node, pasted into another (binary, versioned by their first byte)
    "ticket.join": Sample(
        lambda: tickets.encode(
            tickets.JoinTicket(
                node=ADDR.to_ticket(), cluster_id=bytes(16), join_secret=bytes(range(32))
            )
        ),
        lambda raw: tickets.parse_join(raw.decode().strip()),
    ),
    "ticket.blob": Sample(
        lambda: tickets.encode(
            tickets.BlobTicket(
                provider=ADDR.to_ticket(),
                hash=bytes.fromhex(HASH),
                size=12,
                root=bytes.fromhex(ROOT),
                capability=bytes(32),
            )
        ),
        lambda raw: tickets.parse_blob(raw.decode().strip()),
    ),
}


def path_of(name: str) -> Path:
    if name.startswith("ticket."):
        return WIRE_DIR / f"{name}.txt"
    return WIRE_DIR / f"{name}.bin" if SAMPLES[name].binary else WIRE_DIR / f"{name}.json"


def write() -> list[Path]:
    """(Re)write every sample from the code; files of samples that no longer exist stay (an
    older peer may still send them: delete one only with the protocol's ALPN bump)."""
    WIRE_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for name, sample in SAMPLES.items():
        path = path_of(name)
        path.write_bytes(sample.encode())
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write tests/data/wire/*")
    args = parser.parse_args()
    if not args.write:
        parser.error("nothing to do: pass --write to regenerate the samples")
    for path in write():
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


if __name__ == "__main__":
    main()
