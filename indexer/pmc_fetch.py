"""Fetching article versions from the PMC Cloud Service: by id, or incrementally by inventory.

- :func:`fetch_version` downloads one version into ``<dest>/PMC<n>.<v>/``: its XML, the media its
  ``<graphic>`` / ``<inline-graphic>`` hrefs name (:func:`indexer.pmc_cloud.match_media`) and its
  metadata JSON. Files are downloaded into ``<dest>/.partial/PMC<n>.<v>/`` (resumable ``.part``
  files), each checked against the md5 of its metadata URL; only a complete, verified folder is
  renamed into place. A file whose md5 differs refuses the whole version: its partial folder is
  deleted and nothing of it is stored. Files of an earlier fetch whose md5 still matches are reused.
- :func:`fetch_ids` resolves ``PMC123`` (latest version, by listing) or ``PMC123.2``.
- :func:`fetch_inventory` reads an inventory (``latest`` by default) and takes every metadata
  object changed since a date whose key + ETag the catalogue's ``pmc_objects`` table has not
  settled, newest version of each article only. Work is done in batches: download, then the
  caller's ``ingest`` callback, then the outcome of each object is recorded, so a killed run
  resumes where it stopped and a daily run only fetches what changed.
- License (``--license``) and retraction come from the metadata: a retracted version is not
  downloaded and, when the article is in the catalogue, it is withdrawn
  (:mod:`indexer.withdrawal`); the caller republishes the indexes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from indexer.catalogue import PmcObject, session_scope, utcnow
from indexer.pmc_client import ChecksumMismatch, PmcError
from indexer.pmc_cloud import CloudMetadata, InventoryRow, PmcCloud, graphic_hrefs, match_media, parse_metadata_key
from indexer.vocabulary import PmcObjectStatus
from indexer.withdrawal import find_articles, withdraw_articles
from training.fsio import replace_dir, write_atomic

MAX_FILES_PER_VERSION = 5000
BATCH = 25  # versions downloaded before each ingest + record step

# ingest(folders) -> the folders whose ingest failed
IngestCallback = Callable[[list[Path]], set[Path]]


@dataclass
class FetchReport:
    """What one fetch did (counts per outcome, the folders fetched, the errors)."""

    fetched: list[str] = field(default_factory=list)  # PMC<n>.<v> downloaded (or already complete)
    paths: list[Path] = field(default_factory=list)
    files: int = 0  # files written by this run
    reused: int = 0  # files already present with the right md5
    retracted: list[str] = field(default_factory=list)
    withdrawn_articles: list[int] = field(default_factory=list)
    withdrawn_figures: list[int] = field(default_factory=list)
    filtered: int = 0
    unchanged: int = 0  # inventory rows already settled with the same ETag
    superseded: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (id, message), refusals included
    left: int = 0  # candidates left for a later run by --limit
    inventory: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """One line: versions fetched, retracted / withdrawn, filtered, unchanged, refused, failed."""
        failed = len(self.errors) - len(self.refused)
        parts = [
            f"fetch: {len(self.fetched)} article version(s) fetched ({self.files} files downloaded, "
            f"{self.reused} reused)",
            f"{len(self.retracted)} retracted ({len(self.withdrawn_articles)} withdrawn)",
            f"{self.filtered} filtered by license",
        ]
        if self.inventory is not None:
            parts.append(f"{self.unchanged} unchanged since last seen, {self.superseded} superseded")
        parts.append(f"{len(self.refused)} refused (md5 mismatch), {failed} failed")
        if self.left:
            parts.append(f"{self.left} left by --limit")
        if self.inventory is not None:
            parts.append(f"inventory {self.inventory}")
        return "; ".join(parts) + f"; {self.seconds:.1f}s"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fetch_version(cloud: PmcCloud, meta: CloudMetadata, dest_dir: Path, report: FetchReport) -> Path:
    """Download and verify one version into ``dest_dir/PMC<n>.<v>/`` (see the module docstring).

    Raises ChecksumMismatch (nothing of the version kept) or PmcError.
    """
    final = dest_dir / meta.label
    staging = dest_dir / ".partial" / meta.label
    staging.mkdir(parents=True, exist_ok=True)
    try:
        if final.is_dir():  # an earlier fetch: its files are reused where the md5 still matches
            for old in final.iterdir():
                if old.is_file() and not (staging / old.name).exists():
                    _link_or_copy(old, staging / old.name)
        xml_path = staging / meta.xml.name
        moved = [cloud.http.download(meta.xml.key, xml_path, md5=meta.xml.md5)]
        media, _unmatched = match_media(graphic_hrefs(xml_path.read_bytes()), meta.media)
        if len(media) > MAX_FILES_PER_VERSION:
            raise PmcError(f"{meta.label}: {len(media)} media files, over {MAX_FILES_PER_VERSION}")
        wanted = [meta.xml, *media]
        moved += [cloud.http.download(item.key, staging / item.name, md5=item.md5) for item in media]
        report.files += sum(moved)
        report.reused += len(moved) - sum(moved)
        meta_name = f"{meta.label}.json"
        write_atomic(staging / meta_name, json.dumps(meta.raw, indent=1, sort_keys=True).encode())
        keep = {f.name for f in wanted} | {meta_name}
        for extra in staging.iterdir():  # files of an earlier fetch the new metadata no longer names
            if extra.name not in keep:
                extra.unlink()
    except ChecksumMismatch:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # only when empty (another version may be resuming)
            staging.parent.rmdir()
        raise
    replace_dir(staging, final)  # a reader sees the old folder or the complete new one
    with contextlib.suppress(OSError):
        staging.parent.rmdir()
    return final


class _Recorder:
    """Writes outcomes to ``pmc_objects`` (no-op without a catalogue)."""

    def __init__(self, session_factory: sessionmaker[Session] | None) -> None:
        self.factory = session_factory

    def record(
        self, meta: CloudMetadata, etag: str, status: PmcObjectStatus, *, last_modified: dt.datetime | None = None,
        detail: str | None = None,
    ) -> None:
        self.record_key(meta.key, meta.pmcid, meta.version, etag, status, license_code=meta.license_code,
                        last_modified=last_modified, detail=detail)

    def record_key(
        self, key: str, pmcid: str, version: int, etag: str, status: PmcObjectStatus, *,
        license_code: str | None = None, last_modified: dt.datetime | None = None, detail: str | None = None,
    ) -> None:
        if self.factory is None or not etag:
            return
        with session_scope(self.factory) as session:
            row = session.get(PmcObject, key)
            if row is None:
                row = PmcObject(key=key)
                session.add(row)
            row.etag, row.pmcid, row.version, row.status = etag[:100], pmcid, version, str(status)
            row.license_code = license_code[:100] if license_code else None
            row.last_modified, row.detail, row.seen_at = last_modified, detail[:2000] if detail else None, utcnow()


class _Run:
    """One fetch: handles versions one by one and ingests + records them in batches."""

    def __init__(
        self,
        cloud: PmcCloud,
        dest_dir: Path,
        session_factory: sessionmaker[Session] | None,
        licenses: set[str] | None,
        ingest: IngestCallback | None,
        report: FetchReport,
    ) -> None:
        self.cloud, self.dest_dir, self.factory, self.licenses, self.ingest = (
            cloud, dest_dir, session_factory, licenses, ingest
        )
        self.report = report
        self.recorder = _Recorder(session_factory)
        self.pending: list[tuple[CloudMetadata, str, dt.datetime | None, Path]] = []

    def handle(self, meta: CloudMetadata, etag: str, last_modified: dt.datetime | None = None) -> None:
        """Filter, withdraw or fetch one version (fetched ones wait for the next :meth:`flush`)."""
        rep = self.report
        if self.licenses is not None and (meta.license_code or "") not in self.licenses:
            rep.filtered += 1
            self.recorder.record(meta, etag, PmcObjectStatus.FILTERED, last_modified=last_modified)
            return
        if meta.is_retracted:
            rep.retracted.append(meta.label)
            if self.factory is not None:
                with self.factory() as session:
                    ids = find_articles(session, pmcid=meta.pmcid, doi=meta.doi, pmid=meta.pmid)
                rep.withdrawn_figures += withdraw_articles(self.factory, ids)
                rep.withdrawn_articles += ids
            self.recorder.record(meta, etag, PmcObjectStatus.RETRACTED, last_modified=last_modified)
            return
        try:
            path = fetch_version(self.cloud, meta, self.dest_dir, rep)
        except ChecksumMismatch as exc:
            rep.refused.append((meta.label, str(exc)))
            rep.errors.append((meta.label, str(exc)))
            self.recorder.record(meta, etag, PmcObjectStatus.REFUSED, last_modified=last_modified, detail=str(exc))
            return
        except (PmcError, OSError) as exc:
            rep.errors.append((meta.label, str(exc)))
            self.recorder.record(meta, etag, PmcObjectStatus.FAILED, last_modified=last_modified, detail=str(exc))
            return
        self.pending.append((meta, etag, last_modified, path))
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Ingest the fetched folders (when a callback is given) and record their outcomes."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        failed = self.ingest([p for *_, p in batch]) if self.ingest is not None else set()
        for meta, etag, last_modified, path in batch:
            if path in failed:
                self.report.errors.append((meta.label, "ingest refused the article (see the ingest report)"))
                self.recorder.record(meta, etag, PmcObjectStatus.FAILED, last_modified=last_modified,
                                     detail="ingest failed")
                continue
            self.report.fetched.append(meta.label)
            self.report.paths.append(path)
            if self.ingest is not None:
                self.recorder.record(meta, etag, PmcObjectStatus.INGESTED, last_modified=last_modified)


def fetch_ids(
    cloud: PmcCloud,
    idents: Sequence[str],
    dest_dir: Path,
    *,
    session_factory: sessionmaker[Session] | None = None,
    licenses: Iterable[str] | None = None,
    ingest: IngestCallback | None = None,
    progress: bool = True,
) -> FetchReport:
    """Fetch ``PMC<n>`` (latest version) or ``PMC<n>.<v>`` for each id (see the module docstring)."""
    started = time.perf_counter()
    report = FetchReport()
    run = _Run(cloud, dest_dir, session_factory, set(licenses) if licenses is not None else None, ingest, report)
    for ident in tqdm(idents, desc="fetch", unit="article", disable=not progress):
        try:
            pmcid, version = cloud.resolve(ident)
            meta, etag = cloud.metadata(pmcid, version)
        except PmcError as exc:
            report.errors.append((ident, str(exc)))
            continue
        run.handle(meta, etag)
    run.flush()
    report.seconds = time.perf_counter() - started
    return report


def _seen(session_factory: sessionmaker[Session] | None, keys: list[str]) -> dict[str, PmcObject]:
    found: dict[str, PmcObject] = {}
    if session_factory is None:
        return found
    with session_factory() as session:
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            found.update({r.key: r for r in session.scalars(select(PmcObject).where(PmcObject.key.in_(chunk)))})
    return found


def _settled(row: PmcObject | None, etag: str, licenses: set[str] | None) -> bool:
    """True when a recorded outcome for this ETag needs no new work under this run's filter."""
    if row is None or row.etag != etag:
        return False
    if row.status in PmcObjectStatus.settled():
        return True
    return row.status == PmcObjectStatus.FILTERED and licenses is not None and (row.license_code or "") not in licenses


def fetch_inventory(
    cloud: PmcCloud,
    session_factory: sessionmaker[Session] | None,
    dest_dir: Path,
    *,
    since: dt.date | None = None,
    which: str = "latest",
    licenses: Iterable[str] | None = None,
    limit: int | None = None,
    ingest: IngestCallback | None = None,
    progress: bool = True,
) -> FetchReport:
    """Fetch every version whose metadata changed on or after ``since`` (every unsettled one when
    None) according to inventory ``which``; see the module docstring. Without ``session_factory``
    nothing is recorded (and nothing is skipped as already seen)."""
    started = time.perf_counter()
    report = FetchReport()
    lic = set(licenses) if licenses is not None else None
    run = _Run(cloud, dest_dir, session_factory, lic, ingest, report)
    inventory = cloud.inventory(which)
    report.inventory = inventory.name
    newest: dict[str, int] = {}  # only articles with a version above 1 (most have one version)
    rows: list[tuple[InventoryRow, str, int]] = []
    since_at = dt.datetime.combine(since, dt.time(), tzinfo=dt.UTC) if since is not None else None
    workdir = dest_dir / ".inventory" / inventory.name
    workdir.mkdir(parents=True, exist_ok=True)
    for row in cloud.inventory_rows(inventory, workdir):
        parsed = parse_metadata_key(row.key)
        if parsed is None:
            continue
        pmcid, version = parsed
        if version > 1:
            newest[pmcid] = max(version, newest.get(pmcid, 1))
        if since_at is None or row.last_modified >= since_at:
            rows.append((row, pmcid, version))
    shutil.rmtree(dest_dir / ".inventory", ignore_errors=True)  # read once per run
    rows.sort(key=lambda r: (r[0].last_modified, r[0].key))
    seen = _seen(session_factory, [r.key for r, _, _ in rows])
    todo: list[tuple[InventoryRow, str, int]] = []
    for row, pmcid, version in rows:
        if _settled(seen.get(row.key), row.etag, lic):
            report.unchanged += 1
        elif version < newest.get(pmcid, 1):
            report.superseded += 1
            run.recorder.record_key(row.key, pmcid, version, row.etag, PmcObjectStatus.SUPERSEDED,
                                    last_modified=row.last_modified)
        else:
            todo.append((row, pmcid, version))
    for done, (row, pmcid, version) in enumerate(tqdm(todo, desc="fetch", unit="version", disable=not progress)):
        if limit is not None and len(report.fetched) + len(run.pending) >= limit:
            report.left = len(todo) - done
            break
        try:
            meta, etag = cloud.metadata(pmcid, version)
        except PmcError as exc:
            report.errors.append((f"{pmcid}.{version}", str(exc)))
            continue
        run.handle(meta, etag or row.etag, row.last_modified)
    run.flush()
    report.seconds = time.perf_counter() - started
    return report
