"""Test helpers for the embedding and index tests: clustered vectors and catalogue rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import delete, insert
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalogue import Article, Embedding, Figure, make_engine, make_session_factory

MODEL = "test-model-0123456789ab"


def clustered(n: int, dim: int, *, centers: int = 32, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """``n`` L2-normalised float32 vectors drawn from a mixture of ``centers`` Gaussians."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, dim)).astype(np.float32)
    which = rng.integers(0, centers, n)
    x = means[which] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def factory_for(url: str) -> sessionmaker[Session]:
    """A session factory on a migrated catalogue URL."""
    return make_session_factory(make_engine(url))


def add_figures(
    factory: sessionmaker[Session],
    n: int,
    *,
    article_key: str = "pmcid:PMC1",
    image_paths: Sequence[str | None] | None = None,
    captions: Sequence[str] | None = None,
) -> list[int]:
    """Insert one article (if new) with ``n`` figures; return the figure ids in order."""
    with factory.begin() as session:
        art = session.query(Article).filter_by(key=article_key).one_or_none()
        if art is None:
            art = Article(key=article_key, content_hash="0" * 64, title="t")
            session.add(art)
            session.flush()
        start = session.query(Figure).filter_by(article_id=art.id).count()
        rows = [
            {
                "article_id": art.id,
                "key": f"fig-{start + i}/0",
                "position": start + i,
                "caption": captions[i] if captions is not None else f"caption {start + i}",
                "image_path": image_paths[i] if image_paths is not None else f"media/{start + i}.png",
            }
            for i in range(n)
        ]
        ids = session.scalars(insert(Figure).returning(Figure.id), rows).all()
    return sorted(int(i) for i in ids)


def add_embeddings(
    factory: sessionmaker[Session], kind: str, figure_ids: Sequence[int], vectors: np.ndarray, model_id: str = MODEL
) -> None:
    """Store ``vectors`` for ``figure_ids`` (replacing any stored vector of that kind)."""
    fids = [int(f) for f in figure_ids]
    with factory.begin() as session:
        session.execute(
            delete(Embedding).where(
                Embedding.model_id == model_id, Embedding.kind == kind, Embedding.figure_id.in_(fids)
            )
        )
        session.execute(
            insert(Embedding),
            [
                {"figure_id": f, "model_id": model_id, "kind": kind, "dim": v.shape[0], "vector": v.tobytes()}
                for f, v in zip(fids, np.asarray(vectors, dtype="<f4"), strict=True)
            ],
        )


def delete_figures(factory: sessionmaker[Session], figure_ids: Sequence[int]) -> None:
    """Delete figures (their embeddings go with them)."""
    with factory.begin() as session:
        session.execute(delete(Embedding).where(Embedding.figure_id.in_(list(figure_ids))))
        session.execute(delete(Figure).where(Figure.id.in_(list(figure_ids))))


def populate(
    factory: sessionmaker[Session], n: int, dim: int = 32, *, seed: int = 0, article_key: str = "pmcid:PMC1"
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """``n`` figures with clustered image vectors and nearby caption vectors; (ids, img, cap)."""
    fids = add_figures(factory, n, article_key=article_key)
    img = clustered(n, dim, seed=seed)
    rng = np.random.default_rng(seed + 100)
    cap = img + 0.3 * rng.standard_normal(img.shape).astype(np.float32)
    cap = (cap / np.linalg.norm(cap, axis=1, keepdims=True)).astype(np.float32)
    add_embeddings(factory, "image", fids, img)
    add_embeddings(factory, "caption", fids, cap)
    return fids, img, cap
