"""Durable re-index jobs on the ``jobs`` table, and the worker loop that runs them.

A job is a row: ``kind`` (``ingest``: uploaded packages, payload ``{"paths": [...]}``; ``fetch``:
PMC packages to download, payload ``{"pmcids": [...]}``), ``state`` (``queued`` -> ``running`` ->
``done`` | ``failed``), ``stage``, ``progress`` (0..1), ``counts`` and ``errors``.

- :func:`enqueue` inserts a queued job.
- :func:`claim_next` takes the oldest queued job atomically: on PostgreSQL with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` (concurrent workers never wait on or take the same row),
  elsewhere (SQLite) with a conditional ``UPDATE ... WHERE id = :id AND state = 'queued'`` whose
  row count says who won.
- While a job runs a heartbeat thread stamps ``heartbeat_at``; :func:`requeue_stale` puts a
  ``running`` job whose heartbeat is older than ``job_stale_s`` back in the queue (its worker died:
  a crash, a restart), or fails it after ``job_max_attempts`` claims. Every stage is idempotent
  (re-ingesting an article is a no-op, only missing vectors are embedded, publishing folds in only
  new vectors), so a resumed job simply runs again.
- :class:`Worker` runs the loop: re-queue stale jobs, claim one, run its stages
  ``fetch`` (PMCIDs only) -> ``ingest`` -> ``embed`` (image vectors) -> ``publish`` (the new
  figures are searchable from here) -> ``captions`` (caption vectors, published again, then the
  caption channel's sentence encoder), record the outcome with the seconds each stage took
  (``counts["seconds"]``). The API process runs one in a thread (``run_worker``);
  ``biomedsearch worker`` runs the same loop alone.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from indexer.catalogue import Job, session_scope, utcnow
from indexer.index_update import IndexReport
from indexer.ingest import IngestReport

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed")
# Share of the progress bar each stage ends at.
_STAGE_END = {"fetch": 0.15, "ingest": 0.35, "embed": 0.65, "publish": 0.7, "captions": 0.95}


class JobError(Exception):
    """A job stage failed in a way the job record should state (no traceback needed)."""


def enqueue(session_factory: sessionmaker[Session], kind: str, payload: dict[str, Any]) -> int:
    """Insert a queued job of ``kind`` with ``payload``; return its id."""
    if kind not in ("ingest", "fetch"):
        raise ValueError(f"unknown job kind {kind!r}")
    with session_scope(session_factory) as session:
        job = Job(kind=kind, state="queued", payload=payload, progress=0.0, counts={}, errors=[], attempts=0)
        session.add(job)
        session.flush()
        return int(job.id)


def claim_next(session_factory: sessionmaker[Session], worker_id: str) -> Job | None:
    """Atomically move the oldest queued job to ``running`` for ``worker_id``; None if none is queued."""
    with session_scope(session_factory) as session:
        now = utcnow()
        if session.get_bind().dialect.name == "postgresql":
            job = session.execute(
                select(Job).where(Job.state == "queued").order_by(Job.id).limit(1).with_for_update(skip_locked=True)
            ).scalar_one_or_none()
            if job is None:
                return None
            job.state, job.worker, job.attempts = "running", worker_id, job.attempts + 1
            job.started_at = job.heartbeat_at = now
            return job
        # One UPDATE with the candidate chosen in a subquery: the statement takes SQLite's write lock
        # at once (no read-then-write upgrade that could fail with "database is locked"), and the
        # state = 'queued' condition makes a lost race a no-op.
        oldest = select(Job.id).where(Job.state == "queued").order_by(Job.id).limit(1).scalar_subquery()
        job_id = session.execute(
            update(Job)
            .where(Job.id == oldest, Job.state == "queued")
            .values(state="running", worker=worker_id, attempts=Job.attempts + 1, started_at=now, heartbeat_at=now)
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
            .where(Job.id == job_id, Job.worker == worker_id, Job.state == "running")
            .values(heartbeat_at=utcnow())
        )
        n = _rowcount(result)
    return n == 1


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
    stale = (Job.state == "running") & ((Job.heartbeat_at < cutoff) | Job.heartbeat_at.is_(None))
    with session_scope(session_factory) as session:
        failed = _rowcount(
            session.execute(
                update(Job)
                .where(stale, Job.attempts >= max_attempts)
                .values(
                    state="failed",
                    finished_at=utcnow(),
                    worker=None,
                    stage="abandoned",
                )
                .execution_options(synchronize_session=False)
            )
        )
        requeued = _rowcount(
            session.execute(
                update(Job)
                .where(stale, Job.attempts < max_attempts)
                .values(state="queued", worker=None)
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
    """Jobs per state (every state present, zero when none)."""
    with session_factory() as session:
        rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    counts = dict.fromkeys(STATES, 0)
    counts.update({state: int(n) for state, n in rows})
    return counts


def default_worker_id() -> str:
    """``host:pid:random``: unique per worker instance."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs queued jobs one at a time (see the module docstring).

    ``encoder_provider`` returns the encoder to embed with (the API shares its own; the standalone
    worker loads one on first use); ``text_encoder_provider`` (optional) returns the caption
    channel's sentence encoder (``Settings.text_model``) or None, and its caption vectors and index
    are kept in step too; ``on_published`` is called after each publish (the API refreshes its live
    indexes there so new figures are searchable at once).
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        encoder_provider: Callable[[], Any],
        *,
        text_encoder_provider: Callable[[], Any] | None = None,
        on_published: Callable[[], None] | None = None,
        worker_id: str | None = None,
        progress: bool = False,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.encoder_provider = encoder_provider
        self.text_encoder_provider = text_encoder_provider
        self.on_published = on_published
        self.worker_id = worker_id or default_worker_id()
        self.progress = progress
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the loop ------------------------------------------------------------------------------------
    def run_once(self) -> int | None:
        """Re-queue stale jobs, then claim and run one job; its id, or None when the queue is empty."""
        requeue_stale(self.session_factory, self.settings.job_stale_s, self.settings.job_max_attempts)
        job = claim_next(self.session_factory, self.worker_id)
        if job is None:
            return None
        self.run(job)
        return int(job.id)

    def run_forever(self) -> None:
        """Sweep what killed workers left behind, then run jobs until :meth:`stop`; wait
        ``worker_poll_s`` whenever the queue is empty."""
        try:
            sweep_leftovers(self.settings, self.session_factory)
        except Exception as exc:  # best effort: garbage only, never data
            log.warning("sweep of leftover upload folders failed: %s", exc)
        while not self.stop_event.is_set():
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

    # --- one job -------------------------------------------------------------------------------------
    def run(self, job: Job) -> None:
        """Run ``job``'s stages under a heartbeat and record done / failed."""
        beat_stop = threading.Event()
        interval = max(0.05, min(5.0, self.settings.job_stale_s / 4))

        def beat() -> None:
            while not beat_stop.wait(interval):
                try:
                    heartbeat(self.session_factory, job.id, self.worker_id)
                except Exception as exc:
                    log.warning("heartbeat of job %d failed: %s", job.id, exc)

        beater = threading.Thread(target=beat, name=f"job-{job.id}-heartbeat", daemon=True)
        beater.start()
        counts: dict[str, Any] = dict(job.counts or {})
        errors: list[Any] = list(job.errors or [])
        stage = "start"
        seconds: dict[str, float] = {}
        counts["seconds"] = seconds  # wall time per stage, shown in the job record
        try:
            paths: list[Path] = [Path(p) for p in job.payload.get("paths", [])]
            if job.kind == "fetch":
                stage = "fetch"
                with _stage_timer(seconds, stage):
                    paths = self._fetch(job, counts, errors)
            stage = "ingest"
            with _stage_timer(seconds, stage):
                self._ingest(job, paths, counts, errors)
            stage = "embed"
            with _stage_timer(seconds, stage):
                self._embed(job, counts, errors)
            stage = "publish"
            self._publish(job, counts, errors)
        except Exception as exc:
            known = isinstance(exc, JobError | ValueError | OSError)
            message = str(exc) if known else f"{type(exc).__name__}: {exc}"
            if not known:
                log.exception("job %d failed in stage %s", job.id, stage)
            errors.append({"stage": stage, "message": message[:2000]})
            update_job(
                self.session_factory,
                job.id,
                self.worker_id,
                state="failed",
                stage=stage,
                counts=counts,
                errors=errors,
                finished_at=utcnow(),
            )
        else:
            update_job(
                self.session_factory,
                job.id,
                self.worker_id,
                state="done",
                stage="done",
                progress=1.0,
                counts=counts,
                errors=errors,
                finished_at=utcnow(),
            )
            self._cleanup_uploads(job)
        finally:
            beat_stop.set()
            beater.join(5)

    def _set(self, job: Job, stage: str, progress: float, counts: dict[str, Any], errors: list[Any]) -> None:
        update_job(
            self.session_factory,
            job.id,
            self.worker_id,
            stage=stage,
            progress=round(progress, 4),
            counts=dict(counts),
            errors=list(errors),
        )

    def _fetch(self, job: Job, counts: dict[str, Any], errors: list[Any]) -> list[Path]:
        from indexer.pmc_client import fetch_packages

        s = self.settings
        pmcids = [str(p) for p in job.payload.get("pmcids", [])]
        self._set(job, "fetch", 0.0, counts, errors)

        def on_error(pmcid: str, message: str) -> None:
            errors.append({"stage": "fetch", "pmcid": pmcid, "message": message[:500]})

        paths = fetch_packages(
            pmcids,
            dest_dir=s.downloads_dir,
            base_url=s.pmc_oa_url,
            requests_per_second=s.pmc_requests_per_second,
            retries=s.pmc_retries,
            timeout_s=s.pmc_timeout_s,
            max_download_bytes=s.max_archive_bytes,
            on_error=on_error,
            progress=self.progress,
        )
        counts["fetched"] = len(paths)
        if not paths:
            raise JobError(f"none of the {len(pmcids)} PMCIDs could be fetched")
        return paths

    def _ingest(self, job: Job, paths: list[Path], counts: dict[str, Any], errors: list[Any]) -> None:
        from app.uploads import unzip_package
        from indexer.ingest import ingest_paths

        s = self.settings
        self._set(job, "ingest", _STAGE_END["fetch"] if job.kind == "fetch" else 0.0, counts, errors)
        limits = s.ingest_limits()
        resolved = [unzip_package(p, limits.archive) if p.suffix == ".zip" and p.is_file() else p for p in paths]
        missing = [str(p) for p in resolved if not p.exists()]
        if missing:
            raise JobError(f"uploaded file(s) no longer exist: {', '.join(missing)}")
        report = ingest_paths(resolved, self.session_factory, s.data_home, limits=limits, progress=self.progress)
        counts.update(ingest_counts(report))
        errors.extend(ingest_errors(report))
        if not any(a.status != "failed" for a in report.articles):
            reasons = "; ".join(f"{f.source}: {f.reason} {f.detail}".strip() for f in report.failed[:5])
            raise JobError(f"no article could be ingested from the package(s){': ' + reasons if reasons else ''}")

    def _embed(self, job: Job, counts: dict[str, Any], errors: list[Any], kind: str = "image") -> None:
        """Make the missing ``kind`` vectors (image or caption) of the CLIP encoder."""
        from indexer.embeddings import count_pending, embed_pending

        s = self.settings
        stage, after = ("embed", "ingest") if kind == "image" else ("captions", "publish")
        start, end = _STAGE_END[after], _STAGE_END[stage]
        self._set(job, stage, start, counts, errors)
        encoder = self.encoder_provider()
        total = max(1, count_pending(self.session_factory, encoder.model_id, kinds=(kind,)))

        def on_batch(done: int) -> None:
            self._set(job, stage, start + (end - start) * min(1.0, done / total), counts, errors)

        report = embed_pending(
            self.session_factory,
            encoder,
            s.data_home,
            batch_size=s.encode_batch_size,
            progress=self.progress,
            on_batch=on_batch,
            kinds=(kind,),
        )
        if kind == "image":
            counts["embedded_images"] = report.images
        else:
            counts["embedded_captions"] = report.captions
        errors.extend({"stage": "embed", "figure_id": fid, "message": why} for fid, why in report.failed_images)

    def _text_encoder(self, errors: list[Any]) -> Any:
        """The sentence encoder of the caption channel, or None (none configured, or it failed to
        load: recorded in ``errors``; the caption channel then falls back to the CLIP caption index)."""
        if self.text_encoder_provider is None:
            return None
        try:
            return self.text_encoder_provider()
        except Exception as exc:
            errors.append({"stage": "embed", "message": f"caption-channel text model unavailable: {exc}"[:500]})
            return None

    def _publish(self, job: Job, counts: dict[str, Any], errors: list[Any]) -> None:
        """Publish in the order that makes new figures searchable soonest.

        1. the CLIP indexes with the new image vectors: from here text -> figure (image index and
           full text) and image -> figure search find the new figures;
        2. the CLIP caption vectors, then the CLIP indexes again (image -> caption search);
        3. the caption channel's sentence encoder, when one is configured (until then hybrid search
           finds the new figures through the full-text and image channels).
        """
        s = self.settings
        seconds = counts.setdefault("seconds", {})
        self._set(job, "publish", _STAGE_END["embed"], counts, errors)
        encoder = self.encoder_provider()

        def publish(label: str) -> None:
            from indexer.index_update import update_indexes

            with _stage_timer(seconds, label):
                report = update_indexes(
                    self.session_factory, s.index_dir, encoder.model_id, options=s.index_options(),
                    progress=self.progress,
                )
            counts.update(publish_counts(report))
            if self.on_published is not None:
                self.on_published()

        publish("publish")
        with _stage_timer(seconds, "captions"):
            self._embed(job, counts, errors, kind="caption")
        if counts.get("embedded_captions"):
            publish("publish_captions")
        text_encoder = self._text_encoder(errors)
        if text_encoder is not None:
            from indexer.caption_embeddings import index_captions

            with _stage_timer(seconds, "caption_channel"):
                text_report, _ = index_captions(
                    self.session_factory,
                    text_encoder,
                    s.index_dir,
                    options=s.index_options(),
                    batch_size=s.encode_batch_size,
                    progress=self.progress,
                )
            counts["embedded_captions_text_model"] = text_report.captions
            if self.on_published is not None:
                self.on_published()

    def _cleanup_uploads(self, job: Job) -> None:
        """Remove a finished job's upload folders (their content now lives in the media store)."""
        uploads = (self.settings.data_home / "uploads").resolve()
        for raw in job.payload.get("paths", []):
            folder = Path(raw).resolve().parent
            if folder.parent == uploads:
                shutil.rmtree(folder, ignore_errors=True)


# --- leftovers of killed workers --------------------------------------------------------------------

SWEEP_GRACE_S = 3600.0  # older than any upload being saved or package being unpacked right now


@contextmanager
def _stage_timer(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Record the wall time of the block as ``seconds[stage]`` (also when it fails)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = round(time.perf_counter() - start, 3)


def sweep_leftovers(
    settings: Settings, session_factory: sessionmaker[Session], *, grace_s: float = SWEEP_GRACE_S
) -> int:
    """Remove upload folders no queued or running job refers to, and package-unpacking folders
    (``<data_home>/.tmp/bms-pkg-*``), when older than ``grace_s`` seconds: what a worker killed
    between finishing a job and cleaning up, or in the middle of unpacking, leaves behind. Their
    content is either in the catalogue already or will be unpacked again by the job's retry.
    Returns the number of folders removed."""
    now = time.time()
    home = settings.data_home.resolve()
    with session_factory() as session:
        live = session.scalars(select(Job).where(Job.state.in_(("queued", "running")))).all()
        referenced = {Path(p).resolve().parent for job in live for p in (job.payload or {}).get("paths", [])}
    candidates = [d for d in (home / "uploads").glob("*") if d.is_dir() and d.resolve() not in referenced]
    candidates += [d for d in (home / ".tmp").glob("bms-pkg-*") if d.is_dir()]
    removed = 0
    for folder in candidates:
        try:
            if now - folder.stat().st_mtime < grace_s:
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    if removed:
        log.info("removed %d leftover upload / unpacking folders", removed)
    return removed


# --- Settings -> indexer arguments, indexer reports -> job counts ------------------------------------




def ingest_counts(report: IngestReport) -> dict[str, Any]:
    """Job counts from an ingest report (with the ids of the articles added or replaced)."""
    return {
        "article_ids": list(report.article_ids),
        "articles_added": report.count("added"),
        "articles_replaced": report.count("replaced"),
        "articles_unchanged": report.count("unchanged"),
        "figures": report.figures,
        "images": report.images_stored,
        "skipped": len(report.skipped),
        "sources_refused": len(report.failed),
    }


def ingest_errors(report: IngestReport) -> list[dict[str, str]]:
    """Job error entries for sources the ingester refused (skipped figures are only counted)."""
    return [
        {"stage": "ingest", "source": Path(f.source).name, "message": f"{f.reason}: {f.detail}".strip(": ")[:500]}
        for f in report.failed[:50]
    ]


def publish_counts(report: IndexReport) -> dict[str, Any]:
    """Job counts from an index report: vectors and version per kind."""
    out: dict[str, Any] = {}
    for kind, rep in report.kinds.items():
        out[f"{kind}_vectors"] = rep.ntotal
        out[f"{kind}_version"] = rep.version
    return out
