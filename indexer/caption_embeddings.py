"""Caption vectors from a text-only encoder (the hybrid search's optional sentence encoder).

:func:`indexer.embeddings.embed_pending` encodes both kinds for a CLIP model; a sentence encoder
has no image tower, so :func:`embed_captions` stores only ``caption`` vectors, in the same
``embeddings`` table under the encoder's own ``model_id`` (e.g. ``sentence:all-MiniLM-L6-v2``).
:func:`indexer.index_update.update_indexes` then builds and publishes that model's caption index
like any other (its image index simply stays empty), and ``LiveIndexes(index_dir, model_id)``
serves it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import and_, exists, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from indexer.catalogue import Embedding, Figure
from indexer.embeddings import EmbeddingError, EmbedReport
from training.encoder_protocol import TextEncoder

if TYPE_CHECKING:
    from indexer.index_update import IndexOptions, IndexReport


def _missing_caption(model_id: str) -> object:
    return and_(
        Figure.caption != "",
        ~exists().where(
            Embedding.figure_id == Figure.id, Embedding.model_id == model_id, Embedding.kind == "caption"
        ),
    )


def embed_captions(
    session_factory: sessionmaker[Session],
    encoder: TextEncoder,
    *,
    batch_size: int = 256,
    progress: bool = True,
) -> EmbedReport:
    """Encode and store the caption vector of every figure that lacks one for ``encoder.model_id``.

    Walks the figures in id order, one transaction per batch (an interruption loses at most one
    batch; the next run resumes). Returns an :class:`EmbedReport` (``images`` stays 0). Raises
    EmbeddingError when the encoder returns vectors of the wrong shape.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    model_id, dim = encoder.model_id, int(encoder.dim)
    report = EmbedReport(model_id=model_id)
    start = time.perf_counter()
    with session_factory() as session:
        total = int(session.scalar(select(func.count(Figure.id)).where(_missing_caption(model_id))) or 0)  # type: ignore[arg-type]
    bar = tqdm(total=total, unit="fig", desc=f"embed {model_id}", disable=not progress, leave=False)
    cursor = 0
    try:
        while True:
            with session_factory() as session:
                rows = session.execute(
                    select(Figure.id, Figure.caption)
                    .where(Figure.id > cursor, _missing_caption(model_id))  # type: ignore[arg-type]
                    .order_by(Figure.id)
                    .limit(batch_size)
                ).all()
            if not rows:
                break
            cursor = int(rows[-1].id)
            vecs = np.asarray(encoder.encode_texts([r.caption for r in rows], batch_size=len(rows)), np.float32)
            if vecs.shape != (len(rows), dim) or not np.isfinite(vecs).all():
                raise EmbeddingError(
                    f"encoder returned caption vectors of shape {vecs.shape}, expected ({len(rows)}, {dim})"
                )
            new = [
                {"figure_id": int(r.id), "model_id": model_id, "kind": "caption", "dim": dim,
                 "vector": np.ascontiguousarray(v, dtype="<f4").tobytes()}
                for r, v in zip(rows, vecs, strict=True)
            ]
            try:
                with session_factory.begin() as session:
                    session.execute(insert(Embedding), new)
                report.captions += len(new)
            except IntegrityError:  # a concurrent run stored some, or a figure went away: next pass
                pass
            report.figures += len(rows)
            report.batches += 1
            bar.update(len(rows))
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start
    return report


def index_captions(
    session_factory: sessionmaker[Session],
    encoder: TextEncoder,
    index_dir: Path,
    *,
    options: IndexOptions,
    batch_size: int = 256,
    progress: bool = True,
) -> tuple[EmbedReport, IndexReport]:
    """Encode the captions the sentence ``encoder`` has not encoded yet and publish its caption
    index under ``index_dir``. Returns the embedding and index reports (their ``summary()`` lines)."""
    from indexer.index_update import update_indexes

    report = embed_captions(session_factory, encoder, batch_size=batch_size, progress=progress)
    index_report = update_indexes(session_factory, index_dir, encoder.model_id, options=options, progress=progress)
    return report, index_report
