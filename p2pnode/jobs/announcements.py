"""What the jobs layer gossips: a job is up for grabs, and a job is over."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from p2pnode.jobs.model import Job
from p2pnode.membership import PeerAddr


class JobAnnounced(BaseModel):
    """A pending job and where its origin can be reached to claim it."""

    KIND: ClassVar[str] = "job.announced"
    job: Job
    origin_addr: PeerAddr


class JobFinished(BaseModel):
    """A job reached a terminal state; members update their caches and stop considering it."""

    KIND: ClassVar[str] = "job.finished"
    job: Job
