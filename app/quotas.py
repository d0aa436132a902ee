"""Disk and queue budgets: what a write-key holder can make the service store (issue 17, finding 6).

- :func:`admit_work` refuses new work (an upload or a fetch) when the queue already holds
  ``max_queued_jobs`` unfinished jobs (there is one write key, so the cap is that key's), or when
  the data home's file system has less than ``min_free_bytes`` free (plus what the request brings,
  or may unpack: a zip is unpacked in the request, up to ``max_archive_bytes``). It raises
  :class:`NoCapacity`, whose ``resource`` says which budget is spent; the HTTP layer answers 507
  (disk) or 503 with ``Retry-After`` (queue), the CLI prints the message and exits non-zero.
- :func:`housekeeping` is what a worker runs every ``sweep_interval_s`` seconds, not only at
  start: the upload folders no live job refers to (a failed job's, a killed worker's) and the
  unpacking leftovers (:func:`app.jobs_sweep.sweep_leftovers`), and the fetched packages under
  ``downloads/`` older than ``download_retention_s`` that no live job names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from indexer.catalogue import Job
from indexer.job_inputs import UnsafeJobInput, check_job_paths
from indexer.vocabulary import JobState

log = logging.getLogger(__name__)


class NoCapacity(Exception):
    """New work refused because a budget is spent; ``resource`` is ``"disk"`` or ``"queue"``."""

    def __init__(self, resource: str, message: str, retry_after_s: int = 60) -> None:
        super().__init__(message)
        self.resource = resource
        self.message = message
        self.retry_after_s = retry_after_s


def free_bytes(path: Path) -> int:
    """Bytes free to an unprivileged writer on the file system holding ``path`` (or its nearest
    existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    return int(st.f_bavail) * int(st.f_frsize)


def check_free_space(settings: Settings, incoming_bytes: int = 0) -> None:
    """Raise :class:`NoCapacity` (disk) when storing ``incoming_bytes`` more would leave the data
    home's file system under ``min_free_bytes`` free."""
    free = free_bytes(settings.data_home)
    if free - max(0, incoming_bytes) < settings.min_free_bytes:
        raise NoCapacity(
            "disk",
            f"the data home has {free / 1e9:.2f} GB free; new work needs {incoming_bytes / 1e9:.2f} GB "
            f"plus the floor of {settings.min_free_bytes / 1e9:.2f} GB (BIOMEDSEARCH_MIN_FREE_BYTES): "
            "free disk space or wait for running jobs to finish",
            retry_after_s=300,
        )


def live_jobs(session_factory: sessionmaker[Session]) -> int:
    """Jobs queued or running."""
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(Job).where(Job.state.in_(JobState.live()))) or 0)


def admit_work(settings: Settings, session_factory: sessionmaker[Session], incoming_bytes: int = 0) -> None:
    """Raise :class:`NoCapacity` when new work must be refused: the queue holds ``max_queued_jobs``
    unfinished jobs, or ``incoming_bytes`` would take the disk under its floor."""
    live = live_jobs(session_factory)
    if live >= settings.max_queued_jobs:
        raise NoCapacity(
            "queue",
            f"{live} jobs are queued or running, the most allowed (BIOMEDSEARCH_MAX_QUEUED_JOBS="
            f"{settings.max_queued_jobs}): retry once some have finished",
        )
    check_free_space(settings, incoming_bytes)


def unpack_budget(settings: Settings, path: Path) -> int:
    """Bytes an upload at ``path`` may add when unpacked in the request: a zip up to
    ``max_archive_bytes`` (the unpacking cap), nothing for a tarball (read, not written)."""
    return settings.max_archive_bytes if path.name.lower().endswith(".zip") else 0


@dataclass
class Housekeeping:
    """What one :func:`housekeeping` pass removed."""

    folders: int = 0
    downloads: int = 0
    bytes: int = 0


def prune_downloads(
    settings: Settings, session_factory: sessionmaker[Session], *, now: float | None = None
) -> tuple[int, int]:
    """Remove files under ``downloads/`` older than ``download_retention_s`` that no queued or
    running job names; return (files, bytes) removed. A retention of 0 keeps everything."""
    if settings.download_retention_s <= 0:
        return 0, 0
    root = settings.downloads_dir
    if not root.is_dir():
        return 0, 0
    with session_factory() as session:
        payloads = session.scalars(select(Job.payload).where(Job.state.in_(JobState.live()))).all()
    keep: set[Path] = set()
    for payload in payloads:
        try:
            keep.update(check_job_paths((payload or {}).get("paths"), settings.data_home))
        except (UnsafeJobInput, AttributeError):
            continue
    cutoff = (time.time() if now is None else now) - settings.download_retention_s
    files = size = 0
    for path in sorted(root.rglob("*")):
        try:
            st = path.lstat()
            if not path.is_file() or path.is_symlink() or st.st_mtime >= cutoff or path.resolve() in keep:
                continue
            path.unlink()
        except OSError:
            continue
        files += 1
        size += st.st_size
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only the empty ones
    return files, size


def housekeeping(settings: Settings, session_factory: sessionmaker[Session]) -> Housekeeping:
    """One pass: sweep unreferenced upload and unpacking folders, prune old downloads (best effort:
    errors are logged, never raised, since only garbage is removed)."""
    from app.jobs_sweep import sweep_leftovers

    done = Housekeeping()
    try:
        done.folders = sweep_leftovers(settings, session_factory)
    except Exception as exc:
        log.warning("sweep of leftover upload folders failed: %s", exc)
    try:
        done.downloads, done.bytes = prune_downloads(settings, session_factory)
    except Exception as exc:
        log.warning("pruning of old downloads failed: %s", exc)
    if done.downloads:
        log.info("removed %d downloaded package(s) (%.1f MB) past retention", done.downloads, done.bytes / 1e6)
    return done


class Housekeeper:
    """Runs :func:`housekeeping` at most every ``sweep_interval_s`` seconds (call :meth:`tick` from a loop)."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self._last: float | None = None

    def tick(self) -> Housekeeping | None:
        """Run a pass when one is due (the first call always runs); what it removed, or None."""
        now = time.monotonic()
        if self._last is not None and now - self._last < self.settings.sweep_interval_s:
            return None
        self._last = now
        return housekeeping(self.settings, self.session_factory)

