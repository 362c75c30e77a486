"""What the jobs layer gossips: a job is up for grabs (or several, submitted together), and a job
is over.

Each carries `JobSummary`s, bounded whatever the job holds, so an announcement always fits an
envelope; members believe one only when the envelope's signer is the job's origin.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field, model_validator

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


MAX_ANNOUNCED = 64
"""Jobs one `JobsAnnounced` names at most: 64 summaries (~0.4 KiB each) stay well inside an
envelope's 64 KiB."""


class JobsAnnounced(BaseModel):
    """Several pending jobs of one origin (a batch submit) in one envelope: one signature, and one
    frame per link, for up to `MAX_ANNOUNCED` jobs. `first[i]` is `jobs[i]`'s first claimer."""

    KIND: ClassVar[str] = "job.announced.many"
    jobs: list[JobSummary] = Field(min_length=1, max_length=MAX_ANNOUNCED)
    origin_addr: PeerAddr
    first: list[NodeIdField | None]

    @model_validator(mode="after")
    def _one_first_each(self) -> JobsAnnounced:
        if len(self.first) != len(self.jobs):
            raise ValueError("first names one worker (or none) per job")
        return self

    def each(self) -> list[JobAnnounced]:
        """The announcement of each job, as if it came alone."""
        return [
            JobAnnounced(job=job, origin_addr=self.origin_addr, first=first)
            for job, first in zip(self.jobs, self.first, strict=True)
        ]
