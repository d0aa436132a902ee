"""The embedding store: encode what is not yet encoded for a model, and read vectors back.

Each figure gets up to two vectors per model: ``image`` (from ``Figure.image_path``, relative to
the data home) and ``caption`` (from ``Figure.caption``). Vectors are stored in the ``embeddings``
table as little-endian float32 bytes, so any index can be rebuilt without re-encoding.

:func:`embed_pending` walks the figures that still lack a vector in id order, loads the batch's
images on a thread pool while the previous batch is being encoded, and commits once per batch:
an interruption loses at most one batch, and the next run carries on where this one stopped.
Several processes (e.g. ``torchrun`` ranks) can share the work with ``rank`` / ``world_size``:
each takes the figures whose id is ``rank`` modulo ``world_size`` and writes into the same
catalogue, so nothing needs merging afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from sqlalchemy import and_, exists, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement
from tqdm import tqdm

from indexer.catalogue import Embedding, Figure
from training.encoder_protocol import Encoder

log = logging.getLogger(__name__)

_B = TypeVar("_B")
_S = TypeVar("_S")

KINDS: tuple[str, str] = ("image", "caption")


class EmbeddingError(Exception):
    """Stored or produced vectors that do not have the expected shape."""


@dataclass
class EmbedReport:
    """What one :func:`embed_pending` run did."""

    model_id: str
    figures: int = 0  # figures visited (each needed an image and/or a caption vector)
    images: int = 0  # image vectors stored
    captions: int = 0  # caption vectors stored
    failed_images: list[tuple[int, str]] = field(default_factory=list)  # (figure id, reason)
    batches: int = 0
    seconds: float = 0.0

    @property
    def figures_per_s(self) -> float:
        """Throughput over the whole run."""
        return self.figures / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: counts, time and figures/s."""
        line = (
            f"embedded {self.figures} figures for {self.model_id} ({self.images} images, "
            f"{self.captions} captions) in {self.seconds:.1f}s: {self.figures_per_s:.1f} figures/s"
        )
        if self.failed_images:
            line += f"; {len(self.failed_images)} images unreadable"
        return line


def _missing(model_id: str, kind: str) -> ColumnElement[bool]:
    return ~exists().where(
        Embedding.figure_id == Figure.id, Embedding.model_id == model_id, Embedding.kind == kind
    )


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, not {tuple(kinds)}")
    return tuple(kinds)


def _pending_clause(
    model_id: str, rank: int, world_size: int, kinds: Sequence[str] = KINDS
) -> ColumnElement[bool]:
    needs = []
    if "image" in kinds:
        needs.append(and_(Figure.image_path.is_not(None), _missing(model_id, "image")))
    if "caption" in kinds:
        needs.append(and_(Figure.caption != "", _missing(model_id, "caption")))
    clause = or_(*needs)
    if world_size > 1:
        clause = and_(clause, Figure.id % world_size == rank)
    return clause


def count_pending(
    session_factory: sessionmaker[Session],
    model_id: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    kinds: Sequence[str] = KINDS,
) -> int:
    """How many figures still lack a vector of ``kinds`` (image, caption) for ``model_id`` (in this shard)."""
    with session_factory() as session:
        stmt = select(func.count(Figure.id)).where(_pending_clause(model_id, rank, world_size, _check_kinds(kinds)))
        return int(session.scalar(stmt) or 0)


@dataclass
class _Row:
    figure_id: int
    image_path: str | None
    caption: str
    need_image: bool
    need_caption: bool


def _pending_batches(
    session_factory: sessionmaker[Session],
    model_id: str,
    batch_size: int,
    rank: int,
    world_size: int,
    kinds: Sequence[str] = KINDS,
) -> Iterator[list[_Row]]:
    """Batches of figures needing work of ``kinds``, in figure-id order (keyset pagination)."""
    cursor = 0
    clause = _pending_clause(model_id, rank, world_size, kinds)
    while True:
        with session_factory() as session:
            rows = session.execute(
                select(Figure.id, Figure.image_path, Figure.caption)
                .where(Figure.id > cursor, clause)
                .order_by(Figure.id)
                .limit(batch_size)
            ).all()
            if not rows:
                return
            ids = [r.id for r in rows]
            done = set(
                session.execute(
                    select(Embedding.figure_id, Embedding.kind).where(
                        Embedding.model_id == model_id, Embedding.figure_id.in_(ids)
                    )
                ).all()
            )
        yield [
            _Row(
                r.id,
                r.image_path,
                r.caption or "",
                "image" in kinds and r.image_path is not None and (r.id, "image") not in done,
                "caption" in kinds and bool(r.caption) and (r.id, "caption") not in done,
            )
            for r in rows
        ]
        cursor = ids[-1]


def load_image(data_home: Path, rel_path: str, *, mode: str | None = "RGB") -> Image.Image | str:
    """The image at ``data_home / rel_path`` converted to ``mode``, or a reason string when it cannot be
    read. ``mode=None``: the image opened but not decoded (the caller decodes it, e.g. at reduced size
    with ``draft``, and closes it)."""
    path = (data_home / rel_path).resolve()
    if not path.is_relative_to(data_home):
        return f"image path {rel_path!r} leaves the data home"
    try:
        if mode is None:
            return Image.open(path)
        with Image.open(path) as im:
            return im.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _checked(vectors: np.ndarray, n: int, dim: int, what: str) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.shape != (n, dim) or not np.isfinite(arr).all():
        raise EmbeddingError(f"encoder returned {what} vectors of shape {arr.shape}, expected ({n}, {dim})")
    return arr


def _store(session_factory: sessionmaker[Session], model_id: str, rows: list[dict[str, object]]) -> int:
    """Insert embedding rows in one transaction; on a conflict (another process stored some of
    them, or a figure was deleted meanwhile) retry with what is still missing. Returns rows stored."""
    if not rows:
        return 0
    try:
        with session_factory.begin() as session:
            session.execute(insert(Embedding), rows)
        return len(rows)
    except IntegrityError:
        log.info("embedding batch conflicted with a concurrent writer; storing what is missing")
    fids = sorted({int(r["figure_id"]) for r in rows})  # type: ignore[call-overload]
    with session_factory.begin() as session:
        done = set(
            session.execute(
                select(Embedding.figure_id, Embedding.kind).where(
                    Embedding.model_id == model_id, Embedding.figure_id.in_(fids)
                )
            ).all()
        )
        alive = set(session.scalars(select(Figure.id).where(Figure.id.in_(fids))))
        keep = [r for r in rows if (r["figure_id"], r["kind"]) not in done and r["figure_id"] in alive]
        if keep:
            session.execute(insert(Embedding), keep)
    return len(keep)


def embed_pending(
    session_factory: sessionmaker[Session],
    encoder: Encoder,
    data_home: Path,
    *,
    batch_size: int = 64,
    workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    limit: int | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    kinds: Sequence[str] = KINDS,
) -> EmbedReport:
    """Encode and store every missing image / caption vector of ``encoder.model_id``.

    Inputs: the catalogue's session factory, an encoder (``model_id``, ``dim``, ``encode_images``,
    ``encode_texts``), the data home that ``Figure.image_path`` is relative to, the figures per
    batch, image-loading threads, this process's shard (``rank`` of ``world_size``), an optional
    cap on figures, ``on_batch`` (called with the running figure count after each commit) and
    ``kinds``: which vectors to make (both by default; the re-index job makes the image vectors,
    publishes them, then the caption vectors, so new figures are searchable sooner).
    Returns an :class:`EmbedReport`; unreadable images are listed there and retried next run.
    """
    kinds = _check_kinds(kinds)
    if batch_size < 1 or workers < 1:
        raise ValueError("batch_size and workers must be at least 1")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    data_home = Path(data_home).resolve()
    model_id, dim = encoder.model_id, int(encoder.dim)
    report = EmbedReport(model_id=model_id)
    total = count_pending(session_factory, model_id, rank=rank, world_size=world_size, kinds=kinds)
    if limit is not None:
        total = min(total, limit)
    start = time.perf_counter()
    bar = tqdm(total=total, unit="fig", desc=f"embed {model_id}", disable=not progress, leave=False)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embed-load")
    try:
        batches = _pending_batches(session_factory, model_id, batch_size, rank, world_size, kinds)
        prefetched = _prefetch(batches, pool, data_home)
        for rows, loads in prefetched:
            if limit is not None and report.figures >= limit:
                break
            if limit is not None:
                rows = rows[: limit - report.figures]
            new: list[dict[str, object]] = []
            images: list[Image.Image] = []
            image_fids: list[int] = []
            for row in rows:
                fut = loads.get(row.figure_id)
                if fut is None:
                    continue
                got = fut.result()
                if isinstance(got, str):
                    report.failed_images.append((row.figure_id, got))
                else:
                    images.append(got)
                    image_fids.append(row.figure_id)
            if images:
                vecs = _checked(encoder.encode_images(images, batch_size=len(images)), len(images), dim, "image")
                new += [_row(fid, model_id, "image", v) for fid, v in zip(image_fids, vecs, strict=True)]
            cap_rows = [r for r in rows if r.need_caption]
            if cap_rows:
                texts = [r.caption for r in cap_rows]
                vecs = _checked(encoder.encode_texts(texts, batch_size=len(texts)), len(texts), dim, "caption")
                new += [_row(r.figure_id, model_id, "caption", v) for r, v in zip(cap_rows, vecs, strict=True)]
            _store(session_factory, model_id, new)
            report.images += sum(1 for r in new if r["kind"] == "image")
            report.captions += sum(1 for r in new if r["kind"] == "caption")
            report.figures += len(rows)
            report.batches += 1
            bar.update(len(rows))
            if on_batch is not None:
                on_batch(report.figures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        report.seconds = time.perf_counter() - start
    for fid, reason in report.failed_images:
        log.warning("figure %d: image not embedded (%s)", fid, reason)
    return report


def _row(figure_id: int, model_id: str, kind: str, vector: np.ndarray) -> dict[str, object]:
    return {
        "figure_id": int(figure_id),
        "model_id": model_id,
        "kind": kind,
        "dim": int(vector.shape[0]),
        "vector": np.ascontiguousarray(vector, dtype="<f4").tobytes(),
    }


def one_ahead(batches: Iterator[_B], submit: Callable[[_B], _S]) -> Iterator[_S]:
    """``submit(batch)`` for each batch, called one batch ahead of the consumer: while the caller
    works on one batch's result, the thread pool that ``submit`` hands work to runs the next one's."""
    pending: list[_S] = []
    for batch in batches:
        pending.append(submit(batch))
        if len(pending) == 2:
            yield pending.pop(0)
    yield from pending


def _prefetch(
    batches: Iterator[list[_Row]], pool: ThreadPoolExecutor, data_home: Path
) -> Iterator[tuple[list[_Row], dict[int, Future[Image.Image | str]]]]:
    """Yield each batch with its image loads already submitted, one batch ahead of the consumer."""

    def submit(rows: list[_Row]) -> tuple[list[_Row], dict[int, Future[Image.Image | str]]]:
        loads = {
            r.figure_id: pool.submit(load_image, data_home, r.image_path)
            for r in rows
            if r.need_image and r.image_path is not None
        }
        return rows, loads

    return one_ahead(batches, submit)


# --- reading vectors back ----------------------------------------------------------------------


@dataclass(frozen=True)
class VectorChunk:
    """Stored vectors with their embedding ids and figure ids, in embedding-id order."""

    embedding_ids: np.ndarray  # int64 [n]
    figure_ids: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, dim]

    def __len__(self) -> int:
        return int(self.figure_ids.shape[0])


def _decode(rows: Sequence[tuple[int, int, int, bytes]], dim: int | None) -> VectorChunk:
    if not rows:
        return VectorChunk(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, dim or 0), np.float32))
    width = dim if dim is not None else int(rows[0][2])
    for eid, _fid, d, blob in rows:
        if d != width or len(blob) != 4 * width:
            raise EmbeddingError(f"embedding {eid} has dim {d} / {len(blob)} bytes, expected dim {width}")
    vectors = np.frombuffer(b"".join(r[3] for r in rows), dtype="<f4").reshape(len(rows), width)
    return VectorChunk(
        np.fromiter((r[0] for r in rows), np.int64, len(rows)),
        np.fromiter((r[1] for r in rows), np.int64, len(rows)),
        vectors.astype(np.float32),
    )


def iter_vectors(
    session_factory: sessionmaker[Session],
    model_id: str,
    kind: str,
    *,
    after_id: int = 0,
    upto_id: int | None = None,
    chunk_size: int = 20_000,
) -> Iterator[VectorChunk]:
    """Stored vectors of (``model_id``, ``kind``) with ``after_id < embedding id <= upto_id``, in
    chunks of at most ``chunk_size`` rows, in embedding-id order. Raises EmbeddingError on a
    vector whose width differs from the first one's."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    cursor, dim = after_id, None
    while True:
        stmt = (
            select(Embedding.id, Embedding.figure_id, Embedding.dim, Embedding.vector)
            .where(Embedding.model_id == model_id, Embedding.kind == kind, Embedding.id > cursor)
            .order_by(Embedding.id)
            .limit(chunk_size)
        )
        if upto_id is not None:
            stmt = stmt.where(Embedding.id <= upto_id)
        with session_factory() as session:
            rows = [tuple(r) for r in session.execute(stmt).all()]
        if not rows:
            return
        chunk = _decode(rows, dim)  # type: ignore[arg-type]
        dim = chunk.vectors.shape[1]
        yield chunk
        cursor = int(chunk.embedding_ids[-1])


def read_vectors(
    session_factory: sessionmaker[Session],
    model_id: str,
    kind: str,
    *,
    after_id: int = 0,
    upto_id: int | None = None,
    chunk_size: int = 20_000,
) -> VectorChunk:
    """All of :func:`iter_vectors` concatenated into one :class:`VectorChunk`."""
    chunks = list(
        iter_vectors(session_factory, model_id, kind, after_id=after_id, upto_id=upto_id, chunk_size=chunk_size)
    )
    if not chunks:
        return _decode([], None)
    return VectorChunk(
        np.concatenate([c.embedding_ids for c in chunks]),
        np.concatenate([c.figure_ids for c in chunks]),
        np.concatenate([c.vectors for c in chunks]),
    )


def vectors_for_figures(
    session_factory: sessionmaker[Session], model_id: str, kind: str, figure_ids: Sequence[int]
) -> VectorChunk:
    """The stored vectors of the given figures (those that have one), in embedding-id order."""
    rows: list[tuple[int, int, int, bytes]] = []
    ids = [int(x) for x in figure_ids]
    with session_factory() as session:
        for i in range(0, len(ids), 5_000):
            part = ids[i : i + 5_000]
            rows += [
                tuple(r)  # type: ignore[misc]
                for r in session.execute(
                    select(Embedding.id, Embedding.figure_id, Embedding.dim, Embedding.vector).where(
                        Embedding.model_id == model_id, Embedding.kind == kind, Embedding.figure_id.in_(part)
                    )
                ).all()
            ]
    rows.sort(key=lambda r: r[0])
    return _decode(rows, None)


@dataclass(frozen=True)
class StoreState:
    """The embedding ids and figure ids stored for (model, kind) up to a snapshot id."""

    max_embedding_id: int
    figure_ids: np.ndarray  # int64, sorted
    dim: int | None


def store_state(
    session_factory: sessionmaker[Session], model_id: str, kind: str, upto_id: int | None = None
) -> StoreState:
    """The highest embedding id (or ``upto_id``) and the sorted figure ids with a vector up to it."""
    with session_factory() as session:
        if upto_id is None:
            upto_id = int(
                session.scalar(
                    select(func.max(Embedding.id)).where(Embedding.model_id == model_id, Embedding.kind == kind)
                )
                or 0
            )
        fids = session.scalars(
            select(Embedding.figure_id).where(
                Embedding.model_id == model_id, Embedding.kind == kind, Embedding.id <= upto_id
            )
        ).all()
        dim = session.scalar(
            select(Embedding.dim).where(Embedding.model_id == model_id, Embedding.kind == kind).limit(1)
        )
    return StoreState(upto_id, np.sort(np.asarray(fids, dtype=np.int64)), int(dim) if dim is not None else None)
