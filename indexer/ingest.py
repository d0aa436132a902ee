"""Ingestion: packages / folders / XML / JSONL manifests -> figure catalogue rows + stored images.

:func:`ingest_paths` is the one entry point (the CLI and the API's jobs call it). For each source
found by :mod:`indexer.packages` it parses the article (:mod:`indexer.jats`), resolves each
figure's graphic hrefs to files (:class:`HrefResolver`), validates and stores the images
(:mod:`indexer.images`), and writes the article with its figures to the catalogue.

- Identity: ``Article.key`` (pmcid > doi > pmid > file stem for JATS; ``manifest:...`` for JSONL)
  plus ``Article.content_hash`` (sha256 of the XML bytes / the manifest lines). The same key and
  hash again: nothing is done (no image is even decoded). The same key with another hash: the new
  version replaces the old one's row and figures in one transaction (its figure ids change; the
  removed ids are reported so an index can drop them).
- JSONL manifests: each line ``{"image": path relative to the manifest, "caption": ..., ...}``
  becomes one figure; other fields go to ``Figure.extra``. Lines that carry a ``case_id`` are
  grouped into one article per case (key ``manifest:<folder>/<stem>#<case_id>``); the others form
  one article per manifest file (key ``manifest:<folder>/<stem>``).
- A figure whose image is missing or refused is kept as a caption-only row (``image_path`` None,
  ``skip_reason`` set) and reported as skipped. A source that is refused as a whole (hostile
  archive, hostile or malformed XML) stores nothing and is reported as failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from indexer.archives import ArchiveBudget, ArchiveError, ArchiveLimits, NestedArchiveError, unpacked
from indexer.catalogue import Article, Figure, session_scope, utcnow
from indexer.images import ImageRejected, StoredImage, sniff_image, store_image
from indexer.jats import ArticleRecord, JatsError, clean, parse_jats_file
from indexer.packages import Found, PackageError, Source, discover, walk_extracted
from training.fsio import UnsafePathError, is_inside, safe_parts, sync_filesystem

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif")
_FULL_FIRST = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
_BATCH_FIGURES = 500
_BATCH_ARTICLES = 200


@dataclass(frozen=True)
class IngestLimits:
    """Safety caps for one ingestion run (the CLI fills them from Settings)."""

    max_image_pixels: int = 60_000_000
    max_archive_members: int = 20_000
    max_archive_bytes: int = 2 * 1024**3
    max_member_bytes: int = 512 * 1024**2
    thumbnail_size: int = 320
    max_archive_depth: int = 1  # archives unpacked one inside the other (a PMC package never nests one)

    @property
    def archive(self) -> ArchiveLimits:
        """The subset that applies to unpacking archives."""
        return ArchiveLimits(
            self.max_archive_members, self.max_archive_bytes, self.max_member_bytes, self.max_archive_depth
        )


@dataclass(frozen=True)
class Skipped:
    """Something passed over: a whole source (``item`` "") or one figure / file of it."""

    source: str
    item: str
    reason: str  # short category, e.g. "image not found", "not an image"
    detail: str = ""


@dataclass
class ArticleOutcome:
    """What happened to one article."""

    key: str
    source: str
    status: str  # "added" | "replaced" | "unchanged" | "failed"
    figure_elements: int = 0  # <fig> elements (JATS) or manifest lines
    figures: int = 0  # figure rows written
    images: int = 0  # rows with a stored image


@dataclass
class IngestReport:
    """Counts, per-article outcomes and reasons for everything skipped or refused."""

    articles: list[ArticleOutcome] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    failed: list[Skipped] = field(default_factory=list)  # sources refused as a whole
    article_ids: list[int] = field(default_factory=list)  # ids of articles added or replaced
    removed_figure_ids: list[int] = field(default_factory=list)  # figures dropped by replacements
    seconds: float = 0.0

    def count(self, status: str) -> int:
        """Number of articles with this outcome status."""
        return sum(1 for a in self.articles if a.status == status)

    @property
    def figures(self) -> int:
        """Figure rows written in this run."""
        return sum(a.figures for a in self.articles)

    @property
    def images_stored(self) -> int:
        """Figure rows written with a stored image."""
        return sum(a.images for a in self.articles)

    def summary(self) -> str:
        """One line: articles, figures, images stored, skipped with reasons, failures, time."""
        written = [a for a in self.articles if a.status in ("added", "replaced")]
        reasons = Counter(s.reason for s in self.skipped)
        skipped = ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "none"
        failed = f"; {len(self.failed)} source(s) refused" if self.failed else ""
        return (
            f"ingest: {len(written) + self.count('unchanged')} articles ({self.count('added')} added, "
            f"{self.count('replaced')} replaced, {self.count('unchanged')} unchanged), "
            f"{self.figures} figures written ({self.images_stored} with images, "
            f"{self.figures - self.images_stored} caption-only); skipped: {skipped}{failed}; "
            f"{self.seconds:.1f}s"
        )


def _cut(value: str | None, size: int) -> str | None:
    return value[:size] if value else value


class HrefResolver:
    """Maps graphic hrefs to files in an article folder, whatever the naming convention.

    - no extension: ``name.jpg`` / ``.png`` / ``.tif`` ... are tried (``.gif`` last);
    - ``.tif`` (or any image extension): the exact file, else the same stem with another image
      extension (PMC delivers TIFF masters as JPEG);
    - ``.gif``: a full-size image with the same stem is preferred (GIFs are often thumbnails);
    - PLOS DOI URIs ``info:doi/10.1371/journal.pone.0056489.g001`` -> ``pone.0056489.g001.*``;
    - absolute paths, ``..`` and URLs never resolve; matching is case-insensitive; only regular
      files (not links) count.
    """

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self._listings: dict[Path, dict[str, str]] = {}

    def _names(self, directory: Path) -> dict[str, str]:
        if directory not in self._listings:
            names: dict[str, str] = {}
            try:
                with os.scandir(directory) as it:
                    for entry in it:
                        if entry.is_file(follow_symlinks=False):
                            names.setdefault(entry.name.lower(), entry.name)
            except OSError:
                pass
            self._listings[directory] = names
        return self._listings[directory]

    def image_files(self) -> list[Path]:
        """Regular files with an image suffix directly in the base folder."""
        names = self._names(self.base_dir).values()
        return [self.base_dir / n for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES)]

    @staticmethod
    def _candidates(name: str) -> list[str]:
        lower = name.lower()
        ext = next((e for e in IMAGE_SUFFIXES if lower.endswith(e)), "")
        stem = name[: len(name) - len(ext)] if ext else name
        full = [stem + e for e in _FULL_FIRST]
        if not ext:
            return [*full, stem + ".gif", name]
        if ext == ".gif":
            return [*full, name]
        return [name, *full, stem + ".gif"]

    def resolve(self, href: str) -> Path | None:
        """The file ``href`` names in the base folder, or None."""
        href = href.strip()
        if not href:
            return None
        directory = self.base_dir
        if href.lower().startswith("info:doi/"):
            last = href.rsplit("/", 1)[-1]
            names = [last.split("journal.", 1)[1]] if last.startswith("journal.") else []
            names.append(last)
        else:
            if "://" in href or href.lower().startswith(("file:", "data:", "mailto:")):
                return None
            try:
                parts = safe_parts(href, what="href")
            except UnsafePathError:
                return None
            if not parts:
                return None
            directory = self.base_dir.joinpath(*parts[:-1])
            names = [parts[-1]]
        listing = self._names(directory)
        for name in names:
            for candidate in self._candidates(name):
                real = listing.get(candidate.lower())
                if real:
                    return directory / real
        return None


@dataclass
class _Prepared:
    key: str
    content_hash: str
    fields: dict[str, Any]
    figures: list[dict[str, Any]]
    outcome: ArticleOutcome


# (figure row, image file or None, the reason when None): what the image store works through
_Task = tuple[dict[str, Any], Path | None, str]


# --- recording: the catalogue side of one run ---------------------------------------------------------


class _Recorder:
    """The catalogue writes of one run: pending articles, batched transactions, the durability barrier."""

    def __init__(self, factory: sessionmaker[Session], data_home: Path, report: IngestReport) -> None:
        self.factory = factory
        self.data_home = data_home
        self.report = report
        self.pending: dict[str, _Prepared] = {}
        self.unsynced = False  # image files written since the last durability barrier

    def known_hashes(self, keys: Sequence[str]) -> dict[str, str]:
        """content_hash of the given keys already in the catalogue or pending in this run."""
        found: dict[str, str] = {}
        wanted = [k for k in keys if k not in self.pending]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            with self.factory() as session:
                rows = session.execute(select(Article.key, Article.content_hash).where(Article.key.in_(chunk)))
                found.update({k: h for k, h in rows})
        found.update({k: p.content_hash for k, p in self.pending.items() if k in keys})
        return found

    def add(self, prepared: _Prepared) -> None:
        """Queue an article for the next catalogue write (a later copy with the same key wins)."""
        previous = self.pending.pop(prepared.key, None)
        if previous is not None:
            previous.outcome.status = "unchanged"
            previous.outcome.figures = previous.outcome.images = 0
        self.pending[prepared.key] = prepared
        if len(self.pending) >= _BATCH_ARTICLES or sum(len(p.figures) for p in self.pending.values()) >= (
            _BATCH_FIGURES
        ):
            self.flush()

    def flush(self) -> None:
        """Write every pending article (and replace older versions) in one transaction."""
        if not self.pending:
            return
        batch = list(self.pending.values())
        self.pending = {}
        if self.unsynced:  # the image files must be on disk before rows pointing at them commit
            sync_filesystem(self.data_home)
            self.unsynced = False
        try:
            written = self._write(batch)
        except SQLAlchemyError as exc:
            for p in batch:
                p.outcome.status = "failed"
                p.outcome.figures = p.outcome.images = 0
                self.report.failed.append(Skipped(p.outcome.source, p.key, "catalogue error", str(exc)[:500]))
            return
        self.report.article_ids.extend(written)

    def _write(self, batch: list[_Prepared]) -> list[int]:
        removed: list[int] = []
        articles: list[Article] = []
        with session_scope(self.factory) as session:
            keys = [p.key for p in batch]
            existing = {a.key: a for a in session.scalars(select(Article).where(Article.key.in_(keys)))}
            for p in batch:
                article = existing.get(p.key)
                if article is not None and article.content_hash == p.content_hash:
                    p.outcome.status = "unchanged"
                    p.outcome.figures = p.outcome.images = 0
                    continue
                if article is not None:
                    removed.extend(f.id for f in article.figures)
                    article.figures.clear()
                    session.flush()  # old rows go before the new ones take their keys
                    p.outcome.status = "replaced"
                else:
                    article = Article(key=p.key, created_at=utcnow())
                    session.add(article)
                    p.outcome.status = "added"
                for name, value in p.fields.items():
                    setattr(article, name, value)
                article.content_hash = p.content_hash
                article.updated_at = utcnow()
                article.figures = [Figure(**f) for f in p.figures]
                articles.append(article)
            session.flush()
            ids = [a.id for a in articles]
        self.report.removed_figure_ids.extend(removed)
        return ids


# --- images: decoded in threads, stored content-addressed ------------------------------------------------


class _ImageStore:
    """Stores the figure images of one run (a thread pool decodes them) into their rows."""

    def __init__(self, data_home: Path, limits: IngestLimits, report: IngestReport, recorder: _Recorder,
                 bar: tqdm[Any]) -> None:
        self.data_home = data_home
        self.limits = limits
        self.report = report
        self.recorder = recorder
        self.bar = bar
        self.pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)))

    def _store_one(self, path: Path) -> StoredImage | ImageRejected:
        try:
            return store_image(
                path,
                self.data_home,
                max_pixels=self.limits.max_image_pixels,
                thumbnail_size=self.limits.thumbnail_size,
                max_bytes=self.limits.max_member_bytes,
                fsync=False,  # one sync_filesystem barrier per catalogue batch (see _Recorder.flush)
            )
        except ImageRejected as exc:
            return exc

    def store_all(self, tasks: list[_Task], source: str) -> None:
        """Store each task's image into its row, or mark the row caption-only with the reason."""
        paths = [path for _, path, _ in tasks if path is not None]
        results = self.pool.map(self._store_one, paths)
        if paths:
            self.recorder.unsynced = True
        for row, path, missing in tasks:
            self.bar.update(1)
            if path is None:
                row["skip_reason"] = missing
                category = "no graphic" if missing.startswith("no <graphic>") else "image not found"
                self.report.skipped.append(Skipped(source, row["key"], category, missing))
                continue
            stored = next(results)
            if isinstance(stored, ImageRejected):
                row["skip_reason"] = f"{path.name}: {stored}"
                self.report.skipped.append(
                    Skipped(source, row["key"], str(stored).split(":")[0], row["skip_reason"])
                )
                continue
            row.update(
                image_sha256=stored.sha256,
                image_path=stored.image_path,
                thumb_path=stored.thumb_path,
                width=stored.width,
                height=stored.height,
            )

    def close(self) -> None:
        """Stop the decoding threads."""
        self.pool.shutdown()


# --- per-source processing: one article XML, one manifest ---------------------------------------------------


def _figure_tasks(record: ArticleRecord, resolver: HrefResolver) -> list[_Task]:
    """One row per (figure, graphic) of ``record`` with the file its href names (or why none)."""
    tasks: list[_Task] = []
    for fig in record.figures:
        for index, href in enumerate(fig.hrefs or [None], start=1):
            row: dict[str, Any] = {
                "key": _cut(f"{fig.key_base}/{index}", 300),
                "fig_id": _cut(fig.fig_id, 200),
                "position": len(tasks),
                "label": _cut(fig.label, 200),
                "caption_title": fig.caption_title,
                "caption": fig.caption,
                "mentions": fig.mentions,
                "section": fig.section,
                "graphic_href": href,
                "extra": {"graphics_in_fig": len(fig.hrefs)},
            }
            if href is None:
                tasks.append((row, None, "no <graphic> in this <fig>"))
            else:
                tasks.append((row, resolver.resolve(href), f"no file for href {href!r}"))
    return tasks


def _article_fields(record: ArticleRecord, origin: str) -> dict[str, Any]:
    """The Article columns of ``record`` (cut to their sizes)."""
    extra: dict[str, Any] = {"figure_elements": len(record.figures)}
    if record.license_statement:
        extra["license_statement"] = record.license_statement
    if record.substituted_entities:
        extra["dtd_entities_mapped"] = record.substituted_entities
    return {
        "pmcid": record.pmcid,
        "pmid": _cut(record.pmid, 32),
        "doi": _cut(record.doi, 300),
        "title": record.title,
        "journal": _cut(record.journal, 500),
        "year": record.year,
        "license": _cut(record.license, 200),
        "license_url": _cut(record.license_url, 500),
        "lang": _cut(record.lang, 16),
        "article_type": _cut(record.article_type, 100),
        "source": origin,
        "extra": extra,
    }


_Line = tuple[int, bytes, dict[str, Any]]  # (line number, raw bytes, parsed object) of a manifest line


def _manifest_groups(source: Source, report: IngestReport) -> dict[str, list[_Line]]:
    """The usable lines of a JSONL manifest grouped into articles (per case_id when present)."""
    groups: dict[str, list[_Line]] = {}
    stem = f"{source.path.parent.name}/{source.path.stem}"
    with source.path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                report.skipped.append(Skipped(source.origin, f"line {number}", "invalid JSON", str(exc)))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
                report.skipped.append(
                    Skipped(source.origin, f"line {number}", "no image field", "line lacks an 'image' path")
                )
                continue
            case = obj.get("case_id")
            key = f"manifest:{stem}#{case}" if isinstance(case, str | int) and str(case) else f"manifest:{stem}"
            groups.setdefault(key[:300], []).append((number, raw.strip(), obj))
    return groups


def _manifest_image(base: Path, image: str) -> Path | None:
    """The file a manifest line's ``image`` names under ``base``, or None when it leaves the folder."""
    try:
        path = base.joinpath(*safe_parts(image, what="image path"))
    except UnsafePathError:
        return None
    return path if is_inside(path, base) else None


def _manifest_rows(
    source: Source, lines: list[_Line], report: IngestReport, bar: tqdm[Any]
) -> tuple[list[dict[str, Any]], list[_Task]]:
    """The figure rows of one manifest article, and the image-store tasks of those whose path is safe."""
    rows: list[dict[str, Any]] = []
    tasks: list[_Task] = []
    used_keys: set[str] = set()
    for number, _, obj in lines:
        fig_key = str(obj.get("id") or f"line-{number}")[:280]
        if fig_key in used_keys:
            fig_key = f"{fig_key}#{number}"
        used_keys.add(fig_key)
        caption = obj.get("caption")
        row: dict[str, Any] = {
            "key": fig_key,
            "fig_id": _cut(str(obj["id"]), 200) if obj.get("id") else None,
            "position": len(rows),
            "caption": clean(caption) if isinstance(caption, str) else "",
            "mentions": [],
            "graphic_href": obj["image"],
            "extra": {k: v for k, v in obj.items() if k not in ("image", "caption")},
        }
        path = _manifest_image(source.path.parent, obj["image"])
        if path is None:
            row["skip_reason"] = f"image path {obj['image']!r} escapes the manifest folder"
            bar.update(1)
            report.skipped.append(Skipped(source.origin, fig_key, "unsafe path", row["skip_reason"]))
        elif not path.is_file() or path.is_symlink():
            tasks.append((row, None, f"no file {obj['image']!r}"))
        else:
            tasks.append((row, path, ""))
        rows.append(row)
    return rows, tasks


class _Run:
    """One ingest_paths call: discovery (sources and archives, under one budget), per-source
    processing (an article XML, a manifest), recording (:class:`_Recorder`)."""

    def __init__(
        self, factory: sessionmaker[Session], data_home: Path, limits: IngestLimits, progress: bool
    ) -> None:
        self.data_home = data_home
        self.limits = limits
        self.report = IngestReport()
        self.budget = ArchiveBudget(limits.archive)  # one budget for every archive of the run
        self.bar = tqdm(desc="ingest", unit="fig", disable=not progress, dynamic_ncols=True)
        self.recorder = _Recorder(factory, data_home, self.report)
        self.images = _ImageStore(data_home, limits, self.report, self.recorder, self.bar)

    def close(self) -> None:
        """Release the progress bar and the decoding threads."""
        self.bar.close()
        self.images.close()

    # --- discovery ---------------------------------------------------------------------------------------

    def expand(self, found: Iterator[Found]) -> None:
        """Ingest what discovery yields: sources, archives (unpacked under the run's budget), skips."""
        for item in found:
            if item.skipped is not None:
                self.report.skipped.append(Skipped(item.skipped[0], "", "not ingestible", item.skipped[1]))
            elif item.source is not None:
                self.source(item.source)
            elif item.archive is not None:
                self.archive(item.archive, item.origin or str(item.archive))

    def archive(self, path: Path, origin: str) -> None:
        """Unpack one archive (inside the data home: its filesystem, nothing written elsewhere) and
        ingest what it holds; a refused archive is reported and stores nothing of its own."""
        try:
            with unpacked(path, self.budget, tmp_root=self.data_home / ".tmp") as folder:
                self.expand(walk_extracted(folder, path))
                self.recorder.flush()  # images are stored; write before the folder goes away
        except NestedArchiveError as exc:
            self.report.failed.append(Skipped(origin, "", "nested archive", str(exc)))
        except ArchiveError as exc:
            self.report.failed.append(Skipped(origin, "", "refused package", str(exc)))

    # --- per-source processing -------------------------------------------------------------------------

    def source(self, source: Source) -> None:
        """Ingest one source, turning a refusal into a report entry (nothing of it is stored)."""
        self.bar.set_postfix_str(source.path.name[:40], refresh=False)
        try:
            if source.kind == "jats":
                self.jats(source)
            else:
                self.manifest(source)
        except JatsError as exc:
            self.report.failed.append(Skipped(source.origin, "", "refused XML", str(exc)))
        except OSError as exc:
            self.report.failed.append(Skipped(source.origin, "", "unreadable", str(exc)))

    def jats(self, source: Source) -> None:
        """Parse one article XML, store its figure images and queue it."""
        record = parse_jats_file(source.path)
        name = source.path.name
        stem = name[: name.lower().rfind(".xml")] if ".xml" in name.lower() else source.path.stem
        key = record.key(stem)
        outcome = ArticleOutcome(key, source.origin, "unchanged", figure_elements=len(record.figures))
        self.report.articles.append(outcome)
        if self.recorder.known_hashes([key]).get(key) == record.content_hash:
            self.bar.update(len(record.figures))
            return
        resolver = HrefResolver(source.path.parent)
        tasks = _figure_tasks(record, resolver)
        self.images.store_all(tasks, source.origin)
        if source.single:
            self._report_orphans(resolver, record.media_hrefs, source.origin)
        rows = [row for row, _, _ in tasks]
        outcome.figures = len(rows)
        outcome.images = sum(1 for r in rows if r.get("image_path"))
        self.recorder.add(_Prepared(key, record.content_hash, _article_fields(record, source.origin), rows, outcome))

    def _report_orphans(self, resolver: HrefResolver, hrefs: list[str], origin: str) -> None:
        """Report image-named files in the package that no href uses and that are not images."""
        used = {p for p in (resolver.resolve(h) for h in hrefs) if p is not None}
        for path in resolver.image_files():
            if path in used:
                continue
            reason = sniff_image(path, max_pixels=self.limits.max_image_pixels)
            if reason:
                self.report.skipped.append(
                    Skipped(origin, path.name, reason.split(":")[0], f"unreferenced file {path.name}: {reason}")
                )

    def manifest(self, source: Source) -> None:
        """Ingest a JSONL manifest of image/caption pairs (grouped per case_id when present).

        Images of many groups go to the thread pool together; articles are queued after each chunk.
        """
        groups = _manifest_groups(source, self.report)
        known = self.recorder.known_hashes(list(groups))
        waiting: list[_Prepared] = []
        tasks: list[_Task] = []

        def drain() -> None:
            self.images.store_all(tasks, source.origin)
            tasks.clear()
            for prepared in waiting:
                prepared.outcome.figures = len(prepared.figures)
                prepared.outcome.images = sum(1 for r in prepared.figures if r.get("image_path"))
                self.recorder.add(prepared)
            waiting.clear()

        for key, lines in groups.items():
            digest = hashlib.sha256(b"\n".join(raw for _, raw, _ in lines)).hexdigest()
            outcome = ArticleOutcome(key, source.origin, "unchanged", figure_elements=len(lines))
            self.report.articles.append(outcome)
            if known.get(key) == digest:
                self.bar.update(len(lines))
                continue
            rows, group_tasks = _manifest_rows(source, lines, self.report, self.bar)
            tasks.extend(group_tasks)
            case_id = lines[0][2].get("case_id")
            fields = {
                "title": _cut(f"{source.path.stem} {case_id}" if case_id else source.path.stem, 2000),
                "source": source.origin,
                "article_type": "image-caption-pairs",
                "extra": {"manifest": source.path.name, **({"case_id": case_id} if case_id else {})},
            }
            waiting.append(_Prepared(key, digest, fields, rows, outcome))
            if len(tasks) >= _BATCH_FIGURES:
                drain()
        drain()


def ingest_paths(
    paths: Sequence[Path],
    session_factory: sessionmaker[Session],
    data_home: Path,
    *,
    limits: IngestLimits,
    progress: bool = True,
) -> IngestReport:
    """Ingest every package / folder / XML / JSONL manifest under ``paths`` into the catalogue.

    ``data_home`` receives the images under ``media/``; the catalogue must already be migrated.
    Every archive of the run (and any archive inside one) is unpacked under one
    :class:`~indexer.archives.ArchiveBudget`. Returns an :class:`IngestReport`; raises
    PackageError only for a path that does not exist or is of no supported kind (checked before
    anything is written).
    """
    started = time.perf_counter()
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.exists():
            raise PackageError(f"{path}: no such file or directory")
    run = _Run(session_factory, Path(data_home), limits, progress)
    try:
        for path in paths:
            try:
                run.expand(discover([path]))
            except PackageError as exc:
                run.report.failed.append(Skipped(str(path), "", "not ingestible", str(exc)))
        run.recorder.flush()
    finally:
        run.close()
    run.report.seconds = time.perf_counter() - started
    return run.report
