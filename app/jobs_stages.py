"""The stages of one claimed job: ``fetch`` (PMCID jobs), then :func:`indexer.pipeline.reindex`.

:class:`JobRun` runs them and keeps the job row current: its ``stage`` and ``progress`` (each
stage's share of the bar is :attr:`indexer.vocabulary.Stage.progress`), its ``counts`` (what each
stage did, with the seconds it took in ``counts["seconds"]``) and its ``errors``; at the end it
records ``done``, or ``failed`` with the stage and the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.jobs_queue import update_job
from app.reindex import catalogue, reindex_options
from indexer.archives import ArchiveLimits
from indexer.catalogue import Job, utcnow
from indexer.index_update import IndexReport
from indexer.ingest import IngestReport
from indexer.job_inputs import check_job_paths
from indexer.pipeline import Encoders, ReindexReport, reindex
from indexer.vocabulary import JobKind, JobState, Stage
from training.encoder_protocol import TextEncoder

log = logging.getLogger(__name__)


class JobError(Exception):
    """A job stage failed in a way the job record should state (no traceback needed)."""


def fetch_stage(
    settings: Settings,
    pmcids: list[str],
    errors: list[Any],
    *,
    progress: bool,
    session_factory: sessionmaker[Session] | None = None,
) -> list[Path]:
    """Stage ``fetch``: download the PMCIDs' article versions from the PMC Cloud Service; each one
    that fails (or is retracted: withdrawn from the catalogue given ``session_factory``) is an entry
    in ``errors``.

    Returns the article folders; raises JobError when none could be fetched."""
    from indexer.pmc_client import fetch_packages

    def on_error(pmcid: str, message: str) -> None:
        errors.append({"stage": Stage.FETCH.value, "pmcid": pmcid, "message": message[:500]})

    paths = fetch_packages(
        pmcids,
        dest_dir=settings.downloads_dir,
        base_url=settings.pmc_cloud_url,
        requests_per_second=settings.pmc_requests_per_second,
        retries=settings.pmc_retries,
        timeout_s=settings.pmc_timeout_s,
        max_download_bytes=settings.max_member_bytes,
        session_factory=session_factory,
        on_error=on_error,
        progress=progress,
    )
    if not paths:
        raise JobError(f"none of the {len(pmcids)} PMCIDs could be fetched")
    return paths


def unpack_upload(limits: ArchiveLimits) -> Callable[[Path], Path]:
    """The pipeline's ``unpack`` for uploads: a zipped JATS folder becomes its unpacked folder."""
    from app.uploads import unzip_package

    def unpack(path: Path) -> Path:
        return unzip_package(path, limits) if path.suffix == ".zip" and path.is_file() else path

    return unpack


class JobRun:
    """One claimed ``job`` run by ``worker_id``: :meth:`run` runs its stages and records the outcome.

    ``encoders`` are the pipeline's; a caption-channel encoder that fails to load is an entry in the
    job's errors (the caption channel then falls back to the CLIP caption index), not a failure.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        job: Job,
        worker_id: str,
        encoders: Encoders,
        *,
        on_published: Callable[[], None] | None = None,
        progress: bool = False,
    ) -> None:
        self.settings, self.session_factory, self.job, self.worker_id = settings, session_factory, job, worker_id
        self.encoders = Encoders(encoders.clip, self._guarded(encoders.text) if encoders.text else None)
        self.on_published, self.progress = on_published, progress
        self.stage = "start"
        self.counts: dict[str, Any] = dict(job.counts or {})
        self.errors: list[Any] = list(job.errors or [])  # earlier attempts' and this run's fetch errors
        self.later_errors: list[Any] = []  # after the pipeline's own
        self.seconds: dict[str, float] = {}
        self.report = ReindexReport()
        self._first: Stage | None = None

    def run(self) -> bool:
        """Run the stages; record ``done`` (True) or ``failed`` with the stage and reason (False)."""
        try:
            self._stages()
        except Exception as exc:
            known = isinstance(exc, JobError | ValueError | OSError)
            message = str(exc) if known else f"{type(exc).__name__}: {exc}"
            if not known:
                log.exception("job %d failed in stage %s", self.job.id, self.stage)
            self.later_errors.append({"stage": self.stage, "message": message[:2000]})
            self._write(state=JobState.FAILED, stage=self.stage, finished_at=utcnow())
            return False
        self._write(state=JobState.DONE, stage=JobState.DONE.value, progress=1.0, finished_at=utcnow())
        return True

    def _stages(self) -> None:
        paths = check_job_paths(self.job.payload.get("paths"), self.settings.data_home)  # issue 17: one rule
        if self.job.kind == JobKind.FETCH:
            self._enter(Stage.FETCH, 0.0)
            started = time.perf_counter()
            try:
                pmcids = [str(p) for p in self.job.payload.get("pmcids", [])]
                paths = fetch_stage(self.settings, pmcids, self.errors, progress=self.progress,
                                    session_factory=self.session_factory)
            finally:
                self.seconds[Stage.FETCH.value] = round(time.perf_counter() - started, 3)
            self.counts["fetched"] = len(paths)
        s = self.settings
        options = reindex_options(
            s, require_articles=True, unpack=unpack_upload(s.ingest_limits().archive), progress=self.progress
        )
        reindex(
            paths,
            catalogue(s, self.session_factory),
            self.encoders,
            options,
            self._on_stage,
            on_published=self.on_published,
        )

    def _on_stage(self, stage: Stage, done: float, report: ReindexReport) -> None:
        self.report = report
        self._enter(stage, done)

    def _enter(self, stage: Stage, done: float) -> None:
        """Show ``stage`` with ``done`` (0..1) of its share of the progress bar (the job's first stage
        starts the bar at 0)."""
        self.stage = stage.value
        self._first = self._first or stage
        start, end = stage.progress
        start = 0.0 if stage is self._first else start
        self._write(stage=stage.value, progress=round(start + (end - start) * done, 4))

    def _write(self, **values: Any) -> None:
        counts = {**self.counts, **report_counts(self.report)}
        counts["seconds"] = {**self.seconds, **self.report.seconds}  # wall time per stage
        errors = self.errors + report_errors(self.report) + self.later_errors
        update_job(self.session_factory, self.job.id, self.worker_id, counts=counts, errors=errors, **values)

    def _guarded(self, provider: Callable[[], TextEncoder | None]) -> Callable[[], TextEncoder | None]:
        def text_encoder() -> TextEncoder | None:
            try:
                return provider()
            except Exception as exc:
                message = f"caption-channel text model unavailable: {exc}"[:500]
                self.later_errors.append({"stage": Stage.EMBED.value, "message": message})
                return None

        return text_encoder


# --- pipeline reports -> job counts and errors ---------------------------------------------------


def report_counts(report: ReindexReport) -> dict[str, Any]:
    """Job counts from what the pipeline did so far."""
    out: dict[str, Any] = ingest_counts(report.ingest) if report.ingest is not None else {}
    if report.images is not None:
        out["embedded_images"] = report.images.images
    if report.captions is not None:
        out["embedded_captions"] = report.captions.captions
    if report.labels is not None:
        out["labelled"] = report.labels.labelled
    for publication in report.publications:
        out.update(publish_counts(publication))
    if report.caption_channel is not None:
        out["embedded_captions_text_model"] = report.caption_channel[0].captions
    return out


def report_errors(report: ReindexReport) -> list[dict[str, Any]]:
    """Job error entries: sources the ingester refused, figure images the encoder could not read."""
    out: list[dict[str, Any]] = ingest_errors(report.ingest) if report.ingest is not None else []
    for embedded in (report.images, report.captions):
        if embedded is not None:
            out += [
                {"stage": Stage.EMBED.value, "figure_id": fid, "message": why} for fid, why in embedded.failed_images
            ]
    return out


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


def ingest_errors(report: IngestReport) -> list[dict[str, Any]]:
    """Job error entries for sources the ingester refused (skipped figures are only counted)."""
    return [
        {
            "stage": Stage.INGEST.value,
            "source": Path(f.source).name,
            "message": f"{f.reason}: {f.detail}".strip(": ")[:500],
        }
        for f in report.failed[:50]
    ]


def publish_counts(report: IndexReport) -> dict[str, Any]:
    """Job counts from an index report: vectors and version per kind."""
    out: dict[str, Any] = {}
    for kind, rep in report.kinds.items():
        out[f"{kind}_vectors"] = rep.ntotal
        out[f"{kind}_version"] = rep.version
    return out
