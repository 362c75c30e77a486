"""Many jobs in one request: `POST /jobs/batch` and `POST /jobs/wait`, for parameter sweeps that
would otherwise pay one HTTP request (and one transaction, and one announcement) per job."""

from __future__ import annotations

import trio
from fastapi import APIRouter, HTTPException

from p2pnode.api.schemas import JobsSubmitted, JobsWait, JobView
from p2pnode.jobs.model import Job
from p2pnode.jobs.submission import (
    MAX_BATCH_JOBS,
    BatchRefused,
    JobSubmission,
    SubmissionTooLarge,
)
from p2pnode.node import Node


def job_routes(node: Node) -> APIRouter:
    api = APIRouter()

    @api.post(
        "/jobs/batch",
        responses={
            400: {"description": "a module or blob cannot be used"},
            413: {"description": "too many jobs, or an input over the limit"},
        },
    )
    async def submit_jobs(requests: list[JobSubmission]) -> JobsSubmitted:
        """Submit every job of the list, or none: the answer lists their ids in order. An entry
        the node refuses fails the batch with its index (`job 3: ...`): 422 for a malformed
        one, 400 for a module or blob it cannot use, 413 for an input over the limit; more than
        `MAX_BATCH_JOBS` entries are a 413. Entries name blobs (`module_blob`), as `POST /jobs`."""
        if len(requests) > MAX_BATCH_JOBS:
            raise HTTPException(
                413, f"a batch holds at most {MAX_BATCH_JOBS} jobs, not {len(requests)}"
            )
        for index, request in enumerate(requests):
            if request.module is not None or request.artifacts:
                raise HTTPException(
                    422,
                    f"job {index}: upload the module and artifacts first (PUT /blobs) "
                    "and send module_blob and artifact_blobs",
                )
        try:
            jobs = await node.jobs.submit_batch(requests)
        except BatchRefused as exc:
            status = 413 if isinstance(exc.cause, SubmissionTooLarge) else 400
            raise HTTPException(status, str(exc)) from None
        return JobsSubmitted(ids=[job.id for job in jobs])

    @api.post("/jobs/wait", responses={404: {"description": "a job is not on this node"}})
    async def wait_jobs(request: JobsWait) -> list[JobView]:
        """Long poll for many jobs (a batch): answers when every one is terminal, or after
        `timeout` s, with each job's record in the order given (404 naming the first unknown)."""

        def records() -> list[Job]:
            found = []
            for job_id in request.ids:
                if (job := node.jobs.store.get(job_id)) is None:
                    raise HTTPException(404, f"no job {job_id} on this node")
                found.append(job)
            return found

        records()  # an unknown id is told at once, not after the whole timeout
        with trio.move_on_after(request.timeout):
            await node.jobs.wait_all(request.ids)
        return [
            JobView(**dict(job), waiting_for=node.workers.waiting_for(job)) for job in records()
        ]

    return api
