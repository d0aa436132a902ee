"""Durable re-index jobs on the ``jobs`` table, and the worker loop that runs them.

A job is a row: ``kind`` (a :class:`JobKind`: ``ingest``, uploaded packages, payload
``{"paths": [...]}``; ``fetch``, PMC packages to download, payload ``{"pmcids": [...]}``), ``state``
(a :class:`JobState`: ``queued`` -> ``running`` -> ``done`` | ``failed``), ``stage``, ``progress``
(0..1), ``counts`` and ``errors``. This module is the public face of four small parts:

- :mod:`app.jobs_queue`: enqueue, atomic claims, heartbeats, stale re-queueing, counts;
- :mod:`app.jobs_stages`: one job's stages (``fetch`` for PMCIDs, then the one re-index pipeline,
  :func:`indexer.pipeline.reindex`: the new figures are searchable once their image vectors are
  published, before the captions are encoded) and the job row they keep current;
- :mod:`app.jobs_sweep`: finished jobs' uploads and what killed workers left behind;
- :class:`Worker` (here): the loop. Re-queue stale jobs, claim one, run it under a heartbeat. A
  worker whose encoder is not ready (still loading, or none configured) claims nothing: the jobs
  stay queued and :attr:`Worker.waiting` says why (``/readyz`` shows it).

Every stage is idempotent, so a job re-queued after its worker died simply runs again. The API
process runs one worker in a thread; ``biomedsearch worker`` runs the same loop alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.jobs_queue import (
    claim_next,
    default_worker_id,
    enqueue,
    heartbeat,
    job_counts,
    keep_alive,
    queued_count,
    requeue_stale,
    update_job,
)
from app.jobs_stages import JobError, JobRun
from app.jobs_sweep import SWEEP_GRACE_S, remove_uploads, sweep_leftovers
from app.quotas import Housekeeper
from indexer.catalogue import Job
from indexer.pipeline import Encoders
from indexer.vocabulary import JobKind, JobState
from training.encoder_protocol import Encoder, TextEncoder

__all__ = [
    "SWEEP_GRACE_S",
    "JobError",
    "JobKind",
    "JobState",
    "Worker",
    "claim_next",
    "default_worker_id",
    "enqueue",
    "heartbeat",
    "job_counts",
    "requeue_stale",
    "sweep_leftovers",
    "update_job",
]

log = logging.getLogger(__name__)


class Worker:
    """Runs queued jobs one at a time (see the module docstring).

    ``encoder_provider`` returns the encoder to embed with (the API shares its own; the standalone
    worker loads one on first use); ``encoder_ready`` (optional) returns None when that encoder can
    be had now, else why not: while it says why, no job is claimed. ``text_encoder_provider``
    (optional) returns the caption channel's sentence encoder (``Settings.text_model``) or None, and
    its caption vectors and index are kept in step too; ``on_published`` is called after each
    publication (the API refreshes its live indexes there so new figures are searchable at once).
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        encoder_provider: Callable[[], Encoder],
        *,
        encoder_ready: Callable[[], str | None] | None = None,
        text_encoder_provider: Callable[[], TextEncoder | None] | None = None,
        on_published: Callable[[], None] | None = None,
        worker_id: str | None = None,
        progress: bool = False,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.encoders = Encoders(encoder_provider, text_encoder_provider)
        self.encoder_ready = encoder_ready
        self.on_published = on_published
        self.worker_id = worker_id or default_worker_id()
        self.progress = progress
        self.waiting: str | None = None  # why queued jobs are not being claimed, while they are not
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int | None:
        """Re-queue stale jobs, then claim and run one job; its id, or None when none was claimed
        (the queue is empty, or the encoder is not ready: see :attr:`waiting`)."""
        requeue_stale(self.session_factory, self.settings.job_stale_s, self.settings.job_max_attempts)
        if not self._encoder_ready():
            return None
        job = claim_next(self.session_factory, self.worker_id)
        if job is None:
            return None
        self.run(job)
        return int(job.id)

    def _encoder_ready(self) -> bool:
        """Whether jobs may be claimed: the encoder is ready (sets :attr:`waiting` when it is not
        and jobs are queued)."""
        reason = self.encoder_ready() if self.encoder_ready is not None else None
        waiting = None
        if reason is not None and (queued := queued_count(self.session_factory)):
            waiting = f"{queued} queued job(s) wait for the encoder: {reason}"
            if waiting != self.waiting:
                log.warning("worker %s claims no job: %s", self.worker_id, waiting)
        self.waiting = waiting
        return reason is None

    def run_forever(self) -> None:
        """Run jobs until :meth:`stop`, sweeping unreferenced uploads and old downloads at start and
        every ``sweep_interval_s`` (:mod:`app.quotas`); wait ``worker_poll_s`` whenever no job was claimed."""
        housekeeper = Housekeeper(self.settings, self.session_factory)  # issue 17: sweeps every sweep_interval_s
        while not self.stop_event.is_set():
            housekeeper.tick()
            try:
                ran = self.run_once()
            except Exception as exc:  # database hiccup: log, wait, go on
                log.error("worker loop error: %s", exc)
                ran = None
            if ran is None:
                self.stop_event.wait(self.settings.worker_poll_s)

    def start(self) -> threading.Thread:
        """Run :meth:`run_forever` in a daemon thread."""
        self._thread = threading.Thread(target=self.run_forever, name="biomedsearch-worker", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the loop to stop after the current job and wait for the thread."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, job: Job) -> None:
        """Run ``job``'s stages under a heartbeat, record done / failed, and remove a finished job's uploads."""
        interval = max(0.05, min(5.0, self.settings.job_stale_s / 4))
        with keep_alive(self.session_factory, job.id, self.worker_id, interval):
            run = JobRun(
                self.settings,
                self.session_factory,
                job,
                self.worker_id,
                self.encoders,
                on_published=self.on_published,
                progress=self.progress,
            )
            if run.run():
                remove_uploads(self.settings.data_home, job.payload.get("paths", []))


class LazyEncoder:
    """An encoder loaded on first use, for a worker without a service: ``spec()`` names it (None:
    none configured), ``load(spec)`` loads it. :meth:`ready` tries the load (again at most every
    ``retry_s`` seconds after a failure) and says why there is no encoder; calling returns it."""

    def __init__(
        self, spec: Callable[[], str | None], load: Callable[[str], Encoder], *, missing: str, retry_s: float = 30.0
    ) -> None:
        self._spec, self._load, self._missing, self._retry_s = spec, load, missing, retry_s
        self._encoder: Encoder | None = None
        self._error: str | None = None
        self._failed_at: float | None = None

    def ready(self) -> str | None:
        """None once the encoder is loaded, else why it is not (no spec, or the load failed)."""
        import time

        if self._encoder is not None:
            return None
        if self._failed_at is not None and time.monotonic() - self._failed_at < self._retry_s:
            return self._error
        spec = self._spec()
        if spec is None:
            self._error, self._failed_at = self._missing, time.monotonic()
            return self._error
        try:
            self._encoder = self._load(spec)
        except Exception as exc:
            self._error, self._failed_at = f"could not load encoder {spec!r}: {exc}", time.monotonic()
            log.error("%s", self._error)
            return self._error
        return None

    def __call__(self) -> Encoder:
        """The encoder; raises JobError when it cannot be had (why, as :meth:`ready` says)."""
        reason = self.ready()
        if reason is not None or self._encoder is None:
            raise JobError(reason or "the encoder is not loaded")
        return self._encoder
