"""The job queue on the ``jobs`` table: enqueue, atomic claims, heartbeats, stale re-queueing, counts.

- :func:`enqueue` inserts a queued job.
- :func:`claim_next` takes the oldest queued job atomically: on PostgreSQL with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` (concurrent workers never wait on or take the same row),
  elsewhere (SQLite) with a conditional ``UPDATE ... WHERE id = :id AND state = 'queued'`` whose
  row count says who won.
- While a job runs, :func:`keep_alive` stamps ``heartbeat_at`` from a thread; :func:`requeue_stale`
  puts a ``running`` job whose heartbeat is older than ``stale_after_s`` back in the queue (its
  worker died: a crash, a restart), or fails it after ``max_attempts`` claims.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalogue import Job, session_scope, utcnow
from indexer.vocabulary import JobKind, JobState

log = logging.getLogger(__name__)

ABANDONED = "abandoned"  # the stage shown by a job failed because its workers kept dying


def enqueue(session_factory: sessionmaker[Session], kind: str, payload: dict[str, Any]) -> int:
    """Insert a queued job of ``kind`` (a :class:`JobKind`) with ``payload``; return its id.

    Raises ValueError for an unknown kind."""
    if kind not in tuple(JobKind):
        raise ValueError(f"unknown job kind {kind!r}")
    with session_scope(session_factory) as session:
        job = Job(
            kind=JobKind(kind), state=JobState.QUEUED, payload=payload, progress=0.0, counts={}, errors=[], attempts=0
        )
        session.add(job)
        session.flush()
        return int(job.id)


def claim_next(session_factory: sessionmaker[Session], worker_id: str) -> Job | None:
    """Atomically move the oldest queued job to ``running`` for ``worker_id``; None if none is queued."""
    with session_scope(session_factory) as session:
        now = utcnow()
        if session.get_bind().dialect.name == "postgresql":
            job = session.execute(
                select(Job)
                .where(Job.state == JobState.QUEUED)
                .order_by(Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).scalar_one_or_none()
            if job is None:
                return None
            job.state, job.worker, job.attempts = JobState.RUNNING, worker_id, job.attempts + 1
            job.started_at = job.heartbeat_at = now
            return job
        # One UPDATE with the candidate chosen in a subquery: the statement takes SQLite's write lock
        # at once (no read-then-write upgrade that could fail with "database is locked"), and the
        # state = 'queued' condition makes a lost race a no-op.
        oldest = select(Job.id).where(Job.state == JobState.QUEUED).order_by(Job.id).limit(1).scalar_subquery()
        job_id = session.execute(
            update(Job)
            .where(Job.id == oldest, Job.state == JobState.QUEUED)
            .values(
                state=JobState.RUNNING, worker=worker_id, attempts=Job.attempts + 1, started_at=now, heartbeat_at=now
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if job_id is None:
            return None
        return session.get(Job, job_id, populate_existing=True)


def heartbeat(session_factory: sessionmaker[Session], job_id: int, worker_id: str) -> bool:
    """Stamp the job's heartbeat; False when the job is no longer ours (re-queued or re-claimed)."""
    with session_scope(session_factory) as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == worker_id, Job.state == JobState.RUNNING)
            .values(heartbeat_at=utcnow())
        )
        n = _rowcount(result)
    return n == 1


@contextmanager
def keep_alive(
    session_factory: sessionmaker[Session], job_id: int, worker_id: str, interval_s: float
) -> Iterator[None]:
    """Stamp the job's heartbeat every ``interval_s`` seconds from a thread while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                heartbeat(session_factory, job_id, worker_id)
            except Exception as exc:
                log.warning("heartbeat of job %d failed: %s", job_id, exc)

    beater = threading.Thread(target=beat, name=f"job-{job_id}-heartbeat", daemon=True)
    beater.start()
    try:
        yield
    finally:
        stop.set()
        beater.join(5)


def update_job(session_factory: sessionmaker[Session], job_id: int, worker_id: str, **values: Any) -> None:
    """Set columns of a running job that ``worker_id`` holds (progress, stage, counts, errors)."""
    with session_scope(session_factory) as session:
        session.execute(
            update(Job).where(Job.id == job_id, Job.worker == worker_id).values(heartbeat_at=utcnow(), **values)
        )


def requeue_stale(session_factory: sessionmaker[Session], stale_after_s: float, max_attempts: int) -> int:
    """Re-queue running jobs silent for ``stale_after_s`` seconds (or fail those out of attempts).

    Returns the number of jobs re-queued or failed.
    """
    cutoff = utcnow() - dt.timedelta(seconds=stale_after_s)
    stale = (Job.state == JobState.RUNNING) & ((Job.heartbeat_at < cutoff) | Job.heartbeat_at.is_(None))
    with session_scope(session_factory) as session:
        failed = _rowcount(
            session.execute(
                update(Job)
                .where(stale, Job.attempts >= max_attempts)
                .values(state=JobState.FAILED, finished_at=utcnow(), worker=None, stage=ABANDONED)
                .execution_options(synchronize_session=False)
            )
        )
        requeued = _rowcount(
            session.execute(
                update(Job)
                .where(stale, Job.attempts < max_attempts)
                .values(state=JobState.QUEUED, worker=None)
                .execution_options(synchronize_session=False)
            )
        )
    if requeued or failed:
        log.warning("re-queued %d stale job(s), failed %d out of attempts", requeued, failed)
    return int(requeued) + int(failed)


def _rowcount(result: Any) -> int:
    """Rows matched by an UPDATE (``CursorResult.rowcount``; typed loosely by SQLAlchemy)."""
    return int(result.rowcount)


def job_counts(session_factory: sessionmaker[Session]) -> dict[str, int]:
    """Jobs per state (every :class:`JobState` present, zero when none)."""
    with session_factory() as session:
        rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    counts = {state.value: 0 for state in JobState}
    counts.update({str(state): int(n) for state, n in rows})
    return counts


def queued_count(session_factory: sessionmaker[Session]) -> int:
    """How many jobs are waiting to be claimed."""
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.QUEUED)) or 0)


def default_worker_id() -> str:
    """``host:pid:random``: unique per worker instance."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
