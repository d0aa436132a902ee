"""Disk the jobs leave behind: a finished job's upload folders, and what killed workers left.

A job's uploads live in ``<data_home>/uploads/<random>/``; packages are unpacked under
``<data_home>/.tmp/bms-pkg-*``. Their content is in the catalogue once the job is done, or will be
unpacked again by the job's retry, so both are garbage once no live job refers to them.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from indexer.catalogue import Job
from indexer.vocabulary import JobState

log = logging.getLogger(__name__)

SWEEP_GRACE_S = 3600.0  # older than any upload being saved or package being unpacked right now


def remove_uploads(data_home: Path, paths: Iterable[str]) -> None:
    """Remove the upload folders (``<data_home>/uploads/<folder>``) holding ``paths``; paths
    anywhere else are left alone."""
    uploads = (data_home / "uploads").resolve()
    for raw in paths:
        folder = Path(raw).resolve().parent
        if folder.parent == uploads:
            shutil.rmtree(folder, ignore_errors=True)


def sweep_leftovers(
    settings: Settings, session_factory: sessionmaker[Session], *, grace_s: float = SWEEP_GRACE_S
) -> int:
    """Remove upload folders no queued or running job refers to, and package-unpacking folders
    (``<data_home>/.tmp/bms-pkg-*``), when older than ``grace_s`` seconds: what a worker killed
    between finishing a job and cleaning up, or in the middle of unpacking, leaves behind.
    Returns the number of folders removed."""
    now = time.time()
    home = settings.data_home.resolve()
    with session_factory() as session:
        live = session.scalars(select(Job).where(Job.state.in_(JobState.live()))).all()
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
