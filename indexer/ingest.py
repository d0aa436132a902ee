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
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from indexer.catalogue import Article, Figure, session_scope, utcnow
from indexer.images import ImageRejected, StoredImage, sniff_image, store_image
from indexer.jats import JatsError, clean, parse_jats_file
from indexer.packages import ArchiveLimits, Found, PackageError, Source, discover, unpacked, walk_extracted
from training.fsio import sync_filesystem

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

    @property
    def archive(self) -> ArchiveLimits:
        """The subset that applies to unpacking archives."""
        return ArchiveLimits(self.max_archive_members, self.max_archive_bytes, self.max_member_bytes)


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
            rel = PurePosixPath(href.replace("\\", "/"))
            if rel.is_absolute() or ".." in rel.parts:
                return None
            directory = self.base_dir.joinpath(*rel.parent.parts)
            names = [rel.name]
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


class _Run:
    """State of one ingest_paths call."""

    def __init__(
        self, factory: sessionmaker[Session], data_home: Path, limits: IngestLimits, progress: bool
    ) -> None:
        self.factory = factory
        self.data_home = data_home
        self.limits = limits
        self.report = IngestReport()
        self.pending: dict[str, _Prepared] = {}
        self.unsynced = False  # image files written since the last durability barrier
        self.pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)))
        self.bar = tqdm(desc="ingest", unit="fig", disable=not progress, dynamic_ncols=True)

    # --- catalogue -------------------------------------------------------------------------------------

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

    # --- images ----------------------------------------------------------------------------------------

    def _store_one(self, path: Path) -> StoredImage | ImageRejected:
        try:
            return store_image(
                path,
                self.data_home,
                max_pixels=self.limits.max_image_pixels,
                thumbnail_size=self.limits.thumbnail_size,
                max_bytes=self.limits.max_member_bytes,
                fsync=False,  # one sync_filesystem barrier per catalogue batch (see flush)
            )
        except ImageRejected as exc:
            return exc

    def store_all(self, tasks: list[tuple[dict[str, Any], Path | None, str]], source: str) -> None:
        """Store each task's image into its row, or mark the row caption-only with the reason.

        ``tasks`` are (row, image file or None, reason when None); images are decoded in threads.
        """
        paths = [path for _, path, _ in tasks if path is not None]
        results = self.pool.map(self._store_one, paths)
        if paths:
            self.unsynced = True
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

    # --- sources ---------------------------------------------------------------------------------------

    def jats(self, source: Source) -> None:
        """Parse one article XML, store its figure images and queue it."""
        record = parse_jats_file(source.path)
        name = source.path.name
        stem = name[: name.lower().rfind(".xml")] if ".xml" in name.lower() else source.path.stem
        key = record.key(stem)
        outcome = ArticleOutcome(key, source.origin, "unchanged", figure_elements=len(record.figures))
        self.report.articles.append(outcome)
        if self.known_hashes([key]).get(key) == record.content_hash:
            self.bar.update(len(record.figures))
            return
        resolver = HrefResolver(source.path.parent)
        rows: list[dict[str, Any]] = []
        tasks: list[tuple[dict[str, Any], Path | None, str]] = []
        for fig in record.figures:
            for index, href in enumerate(fig.hrefs or [None], start=1):
                row: dict[str, Any] = {
                    "key": _cut(f"{fig.key_base}/{index}", 300),
                    "fig_id": _cut(fig.fig_id, 200),
                    "position": len(rows),
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
                rows.append(row)
        self.store_all(tasks, source.origin)
        if source.single:
            self._report_orphans(resolver, record.media_hrefs, source.origin)
        extra: dict[str, Any] = {"figure_elements": len(record.figures)}
        if record.license_statement:
            extra["license_statement"] = record.license_statement
        if record.substituted_entities:
            extra["dtd_entities_mapped"] = record.substituted_entities
        fields = {
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
            "source": source.origin,
            "extra": extra,
        }
        outcome.figures = len(rows)
        outcome.images = sum(1 for r in rows if r.get("image_path"))
        self.add(_Prepared(key, record.content_hash, fields, rows, outcome))

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
        """Ingest a JSONL manifest of image/caption pairs (grouped per case_id when present)."""
        base = source.path.parent
        groups: dict[str, list[tuple[int, bytes, dict[str, Any]]]] = {}
        stem = f"{base.name}/{source.path.stem}"
        with source.path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except ValueError as exc:
                    self.report.skipped.append(Skipped(source.origin, f"line {number}", "invalid JSON", str(exc)))
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
                    self.report.skipped.append(
                        Skipped(source.origin, f"line {number}", "no image field", "line lacks an 'image' path")
                    )
                    continue
                case = obj.get("case_id")
                key = f"manifest:{stem}#{case}" if isinstance(case, str | int) and str(case) else f"manifest:{stem}"
                groups.setdefault(key[:300], []).append((number, raw.strip(), obj))
        known = self.known_hashes(list(groups))
        resolved_base = base.resolve()
        # images of many groups go to the thread pool together; articles are queued after each chunk
        waiting: list[_Prepared] = []
        tasks: list[tuple[dict[str, Any], Path | None, str]] = []

        def drain() -> None:
            self.store_all(tasks, source.origin)
            tasks.clear()
            for prepared in waiting:
                prepared.outcome.figures = len(prepared.figures)
                prepared.outcome.images = sum(1 for r in prepared.figures if r.get("image_path"))
                self.add(prepared)
            waiting.clear()

        for key, lines in groups.items():
            digest = hashlib.sha256(b"\n".join(raw for _, raw, _ in lines)).hexdigest()
            outcome = ArticleOutcome(key, source.origin, "unchanged", figure_elements=len(lines))
            self.report.articles.append(outcome)
            if known.get(key) == digest:
                self.bar.update(len(lines))
                continue
            rows: list[dict[str, Any]] = []
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
                rel = PurePosixPath(obj["image"].replace("\\", "/"))
                path = base.joinpath(*rel.parts)
                if rel.is_absolute() or ".." in rel.parts or not path.resolve().is_relative_to(resolved_base):
                    row["skip_reason"] = f"image path {obj['image']!r} escapes the manifest folder"
                    self.bar.update(1)
                    self.report.skipped.append(Skipped(source.origin, fig_key, "unsafe path", row["skip_reason"]))
                elif not path.is_file() or path.is_symlink():
                    tasks.append((row, None, f"no file {obj['image']!r}"))
                else:
                    tasks.append((row, path, ""))
                rows.append(row)
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


def _expand(found: Iterator[Found], run: _Run, limits: IngestLimits) -> None:
    for item in found:
        if item.skipped is not None:
            run.report.skipped.append(Skipped(item.skipped[0], "", "not ingestible", item.skipped[1]))
        elif item.source is not None:
            run.source(item.source)
        elif item.archive is not None:
            try:
                # unpacked inside the data home (its filesystem, nothing written elsewhere)
                with unpacked(item.archive, limits.archive, tmp_root=run.data_home / ".tmp") as folder:
                    _expand(walk_extracted(folder, item.archive), run, limits)
                    run.flush()  # images are stored; write before the folder goes away
            except PackageError as exc:
                run.report.failed.append(Skipped(str(item.archive), "", "refused package", str(exc)))


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
    Returns an :class:`IngestReport`; raises PackageError only for a path that does not exist or
    is of no supported kind (checked before anything is written).
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
                _expand(discover([path]), run, limits)
            except PackageError as exc:
                run.report.failed.append(Skipped(str(path), "", "not ingestible", str(exc)))
        run.flush()
    finally:
        run.bar.close()
        run.pool.shutdown()
    run.report.seconds = time.perf_counter() - started
    return run.report
