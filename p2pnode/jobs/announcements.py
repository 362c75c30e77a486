"""What the jobs layer gossips: a job is up for grabs, and a job is over.

Both carry a `JobSummary`, bounded whatever the job holds, so an announcement always fits an
envelope; members believe one only when the envelope's signer is the job's origin.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from p2pnode.ids import NodeIdField
from p2pnode.jobs.model import JobSummary
from p2pnode.net.addr import PeerAddr


class JobAnnounced(BaseModel):
    """A pending job and where its origin can be reached to claim it."""

    KIND: ClassVar[str] = "job.announced"
    job: JobSummary
    origin_addr: PeerAddr
    first: NodeIdField | None = None
    """The worker the origin asks to claim it first (an idle one, in turn); the others wait
    `model.DEFER_TO_FIRST_S` before they claim it, so a job costs one claim, not one per worker."""


class JobFinished(BaseModel):
    """A job reached a terminal state; a worker still running it (it was cancelled) stops."""

    KIND: ClassVar[str] = "job.finished"
    job: JobSummary
