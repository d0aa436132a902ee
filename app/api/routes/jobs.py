"""``GET /api/jobs/{id}`` and ``GET /api/jobs``: re-index job state, progress, counts and errors."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from sqlalchemy import func, select

from app.api.deps import SessionDep
from app.api.routes._common import ERRORS, MAX_ID
from app.middleware import ApiError
from app.schemas import JobList, JobOut, job_out
from indexer.catalogue import Job
from indexer.vocabulary import JobState

router = APIRouter(prefix="/api/jobs", tags=["jobs"], responses=ERRORS)


@router.get("/{job_id}", response_model=JobOut, summary="One job")
def get_job(job_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], session: SessionDep) -> JobOut:
    """The job's state, stage, progress (0..1), counts and errors."""
    job = session.get(Job, job_id)
    if job is None:
        raise ApiError(404, f"job {job_id} not found")
    return job_out(job)


@router.get("", response_model=JobList, summary="Jobs, newest first")
def list_jobs(
    session: SessionDep,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> JobList:
    """A page of jobs (optionally of one state) and the total count."""
    where = [Job.state == state] if state else []
    total = session.execute(select(func.count()).select_from(Job).where(*where)).scalar_one()
    rows = session.execute(select(Job).where(*where).order_by(Job.id.desc()).limit(limit).offset(offset)).scalars()
    return JobList(jobs=[job_out(j) for j in rows], total=int(total))
