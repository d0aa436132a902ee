"""The pipeline's ``label`` stage: each figure's type for the current encoder, and its multi-panel flag.

:func:`label_pending` walks, in figure-id order, the figures that need a label from ``encoder``:

- no ``figure_labels`` row for this model and :data:`indexer.figure_types.CLASSIFIER_VERSION`
  (new figures, a new encoder, a new classifier);
- or a caption-only label (no image vector then) while an image vector for this model now exists;
- or no multi-panel flag yet.

For each batch it reads the stored image vectors (:func:`indexer.embeddings.vectors_for_figures`),
scores them zero-shot (:class:`indexer.figure_types.ZeroShot`, class vectors encoded once per run),
adds the caption evidence, and writes the label rows and the figures' current label in one
transaction. The multi-panel flag does not depend on the model: it is computed once per figure, from
the caption and (loaded on a thread pool, one batch ahead) the image. Finally every figure whose
current label is another model's takes this model's stored one (switching back to an encoder costs
no re-labelling). Search filters and facets read the figures' columns (:mod:`indexer.filters`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement
from tqdm import tqdm

from indexer.caption_evidence import caption_scores
from indexer.catalogue import Embedding, Figure, FigureLabel, utcnow
from indexer.embeddings import load_image, one_ahead, vectors_for_figures
from indexer.figure_types import (
    CLASSIFIER_VERSION,
    DEFAULT_PARAMS,
    IMAGE_TYPES,
    CombineParams,
    ZeroShot,
    best,
    combine,
)
from indexer.panels import caption_panels, image_panels, panel_evidence
from indexer.vocabulary import VectorKind
from training.encoder_protocol import TextEncoder

log = logging.getLogger(__name__)


@dataclass
class LabelReport:
    """What one :func:`label_pending` run did."""

    model_id: str
    labelled: int = 0  # figures given this model's label
    with_image: int = 0  # of those, labelled with their image vector (the others from the caption alone)
    panels: int = 0  # figures whose multi-panel flag was computed
    multipanel: int = 0  # of those, found multi-panel
    switched: int = 0  # figures that took this model's stored label (it was another model's)
    failed_images: list[tuple[int, str]] = field(default_factory=list)  # unreadable for the gutter check
    seconds: float = 0.0

    def summary(self) -> str:
        """One line: counts and time."""
        line = (
            f"labelled {self.labelled} figures for {self.model_id} ({self.with_image} with their image, "
            f"{self.labelled - self.with_image} from the caption alone); {self.multipanel} of {self.panels} "
            f"checked multi-panel"
        )
        if self.switched:
            line += f"; {self.switched} switched to this model's stored labels"
        return line + f" in {self.seconds:.1f}s"


def _pending_clause(model_id: str) -> ColumnElement[bool]:
    current = exists().where(
        FigureLabel.figure_id == Figure.id,
        FigureLabel.model_id == model_id,
        FigureLabel.classifier == CLASSIFIER_VERSION,
    )
    has_vector = exists().where(
        Embedding.figure_id == Figure.id, Embedding.model_id == model_id, Embedding.kind == VectorKind.IMAGE.value
    )
    caption_only = exists().where(
        FigureLabel.figure_id == Figure.id, FigureLabel.model_id == model_id, FigureLabel.image_used.is_(False)
    )
    return or_(~current, and_(caption_only, has_vector), Figure.multipanel.is_(None))


def count_unlabelled(session_factory: sessionmaker[Session], model_id: str) -> int:
    """How many figures :func:`label_pending` would label for ``model_id``."""
    with session_factory() as session:
        return int(session.scalar(select(func.count(Figure.id)).where(_pending_clause(model_id))) or 0)


_COLUMNS = (Figure.id, Figure.caption, Figure.caption_title, Figure.label, Figure.mentions, Figure.image_path,
            Figure.multipanel, Figure.multipanel_evidence)


def _batches(session_factory: sessionmaker[Session], model_id: str, size: int) -> Iterator[list[Row[Any]]]:
    cursor, clause = 0, _pending_clause(model_id)
    while True:
        with session_factory() as session:
            rows = list(
                session.execute(select(*_COLUMNS).where(Figure.id > cursor, clause).order_by(Figure.id).limit(size))
            )
        if not rows:
            return
        yield rows
        cursor = int(rows[-1].id)


def _gutters(data_home: Path, rel: str) -> bool | str:
    """The image's gutter verdict, or why it could not be read."""
    got = load_image(data_home, rel, mode=None)
    if isinstance(got, str):
        return got
    try:
        with got:
            return image_panels(got)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _prefetch(
    batches: Iterator[list[Row[Any]]], pool: ThreadPoolExecutor, data_home: Path
) -> Iterator[tuple[list[Row[Any]], dict[int, Future[bool | str]]]]:
    """Each batch with the gutter checks of its unflagged images submitted, one batch ahead."""

    def submit(rows: list[Row[Any]]) -> tuple[list[Row[Any]], dict[int, Future[bool | str]]]:
        return rows, {
            int(r.id): pool.submit(_gutters, data_home, r.image_path)
            for r in rows
            if r.multipanel is None and r.image_path
        }

    return one_ahead(batches, submit)


def label_pending(
    session_factory: sessionmaker[Session],
    encoder: TextEncoder,
    data_home: Path,
    *,
    params: CombineParams | None = None,
    batch_size: int = 256,
    workers: int = 2,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> LabelReport:
    """Label every figure that needs it for ``encoder.model_id`` (see the module docstring).

    Inputs: the catalogue's session factory, the CLIP encoder (its text tower encodes the prompts;
    the image vectors are the stored ones), the data home the images are relative to, the
    combination's weights (default :data:`indexer.figure_types.DEFAULT_PARAMS`), figures per batch,
    image-reading threads, and ``on_batch`` (called with the running count after each commit).
    Returns a :class:`LabelReport`. Running it again labels nothing new.
    """
    if batch_size < 1 or workers < 1:
        raise ValueError("batch_size and workers must be at least 1")
    data_home = Path(data_home).resolve()
    model_id = encoder.model_id
    report = LabelReport(model_id=model_id)
    start = time.perf_counter()
    total = count_unlabelled(session_factory, model_id)
    zero_shot = ZeroShot(encoder) if total else None
    bar = tqdm(total=total, unit="fig", desc=f"label {model_id}", disable=not progress, leave=False)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="label-load")
    try:
        for rows, gutters in _prefetch(_batches(session_factory, model_id, batch_size), pool, data_home):
            assert zero_shot is not None
            _label_batch(session_factory, zero_shot, params or DEFAULT_PARAMS, rows, gutters, report)
            bar.update(len(rows))
            if on_batch is not None:
                on_batch(report.labelled)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    report.switched = _switch_current(session_factory, model_id)
    report.seconds = time.perf_counter() - start
    for fid, reason in report.failed_images:
        log.warning("figure %d: image not checked for panels (%s)", fid, reason)
    return report


def _label_batch(
    session_factory: sessionmaker[Session],
    zero_shot: ZeroShot,
    params: CombineParams,
    rows: list[Row[Any]],
    gutters: dict[int, Future[bool | str]],
    report: LabelReport,
) -> None:
    """Label one batch and store it (one transaction)."""
    model_id = zero_shot.model_id
    ids = [int(r.id) for r in rows]
    chunk = vectors_for_figures(session_factory, model_id, VectorKind.IMAGE.value, ids)
    cosines = np.full((len(rows), len(IMAGE_TYPES)), np.nan, dtype=np.float32)
    if len(chunk):
        position = {fid: i for i, fid in enumerate(ids)}
        cosines[[position[int(f)] for f in chunk.figure_ids]] = zero_shot.cosines(chunk.vectors)
    evidence = np.stack([
        caption_scores(r.caption or "", title=r.caption_title, label=r.label,
                       mentions=r.mentions if isinstance(r.mentions, list) else ())
        for r in rows
    ])
    labels = best(combine(evidence, cosines, params))
    now = utcnow()
    label_rows: list[dict[str, Any]] = []
    figure_rows: list[dict[str, Any]] = []
    for i, (row, (kind, confidence)) in enumerate(zip(rows, labels, strict=True)):
        used = not bool(np.isnan(cosines[i]).any())
        label_rows.append({
            "figure_id": int(row.id), "model_id": model_id, "classifier": CLASSIFIER_VERSION,
            "figure_type": kind.value, "confidence": round(confidence, 4), "image_used": used, "created_at": now,
        })
        values: dict[str, Any] = {
            "id": int(row.id), "figure_type": kind.value, "type_confidence": round(confidence, 4),
            "type_model": model_id,
        }
        if row.multipanel is None:
            values.update(_panels(row, gutters.get(int(row.id)), report))
        figure_rows.append(values)
        report.with_image += used
    with session_factory.begin() as session:
        alive = set(session.scalars(select(Figure.id).where(Figure.id.in_(ids))))
        label_rows = [r for r in label_rows if r["figure_id"] in alive]  # a figure deleted meanwhile is skipped
        figure_rows = [r for r in figure_rows if r["id"] in alive]
        session.execute(delete(FigureLabel).where(FigureLabel.model_id == model_id, FigureLabel.figure_id.in_(ids)))
        if label_rows:
            session.execute(insert(FigureLabel), label_rows)
            session.execute(update(Figure), figure_rows)
    report.labelled += len(label_rows)


def _panels(row: Row[Any], gutter: Future[bool | str] | None, report: LabelReport) -> dict[str, Any]:
    """The figure's multi-panel columns from its caption and its image's gutter check."""
    image: bool | None = None
    if gutter is not None:
        got = gutter.result()
        if isinstance(got, str):
            report.failed_images.append((int(row.id), got))
        else:
            image = got
    caption = caption_panels(" ".join(p for p in (row.caption_title, row.caption) if p))
    evidence = panel_evidence(caption, image)
    report.panels += 1
    report.multipanel += caption or bool(image)
    return {"multipanel": caption or bool(image), "multipanel_evidence": evidence.value}


def _switch_current(session_factory: sessionmaker[Session], model_id: str) -> int:
    """Give every figure whose current label is another model's this model's stored label."""
    stored = select(FigureLabel).where(FigureLabel.figure_id == Figure.id, FigureLabel.model_id == model_id)
    label = stored.with_only_columns(FigureLabel.figure_type).scalar_subquery()
    confidence = stored.with_only_columns(FigureLabel.confidence).scalar_subquery()
    with session_factory.begin() as session:
        result = session.execute(
            update(Figure)
            .where(and_(or_(Figure.type_model.is_(None), Figure.type_model != model_id), stored.exists()))
            .values(figure_type=label, type_confidence=confidence, type_model=model_id)
            .execution_options(synchronize_session=False)
        )
    return int(getattr(result, "rowcount", 0) or 0)
