"""Settings -> the arguments of :func:`indexer.pipeline.reindex`, for every app entry point that runs
it (the job worker, the demo, ``biomedsearch index``): where the catalogue lives and how the stages run."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from indexer.pipeline import Catalogue, ReindexOptions


def catalogue(settings: Settings, session_factory: sessionmaker[Session]) -> Catalogue:
    """The pipeline's catalogue: ``session_factory`` (on ``settings``' database), the data home and
    its index folder."""
    return Catalogue(session_factory, settings.data_home, settings.index_dir)


def reindex_options(settings: Settings, *, rebuild: bool = False, **overrides: Any) -> ReindexOptions:
    """The pipeline's options from ``settings`` (ingestion caps, index options, encoder batch size);
    ``overrides`` set the other :class:`ReindexOptions` fields (``rebuild``: rebuild the indexes
    from the stored vectors)."""
    fields: dict[str, Any] = {
        "limits": settings.ingest_limits(),
        "index": settings.index_options(rebuild=rebuild),
        "batch_size": settings.encode_batch_size,
    }
    return ReindexOptions(**{**fields, **overrides})
