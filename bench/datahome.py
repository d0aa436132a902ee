"""Synthetic data homes for the service and freshness stages, written with the indexer's own API.

:func:`populate` inserts ``n`` figures (5 per article, real radiology captions from the shared
ROCO captions file, cycled) into a fresh catalogue; :func:`publish_vectors` publishes an image
index of synthetic unit vectors for those figures (exact up to ``exact_index_max``, otherwise the
indexer's IVF with nprobe tuned to Recall@10 >= 0.95) exactly as ``indexer.publish`` does;
:func:`store_embeddings` writes stored vectors instead, for stages that run the real
``update_indexes`` path. Captions also serve as query texts (:func:`query_texts`).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from bench.synthetic import MixtureSpec, embedding_mixture
from indexer.catalogue import Article, Embedding, Figure, open_database
from indexer.publish import IndexStore
from indexer.vector_index import AnnSpec, VectorIndex, exact_neighbours, tune_nprobe

FIGURES_PER_ARTICLE = 5
FALLBACK = ["Axial CT of the chest with contrast showing a right lower lobe mass."]


def captions(shared_data: Path, limit: int = 20_000) -> list[str]:
    """Real captions: ROCO radiology captions (and MedPix ones), de-duplicated, in file order."""
    out: dict[str, None] = {}
    roco = shared_data / "roco-captions" / "captions.tsv"
    if roco.is_file():
        with open(roco, encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                text = (row.get("caption") or "").strip()
                if text:
                    out[text] = None
                if len(out) >= limit:
                    break
    return list(out) or FALLBACK


def query_texts(shared_data: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct short queries (3-10 words cut from real captions; numbered when they run out)."""
    rng = np.random.default_rng(seed)
    seen: dict[str, None] = {}
    pool = captions(shared_data)
    for text in pool:
        words = text.rstrip(".").split()
        cut = " ".join(words[: int(rng.integers(3, 11))])
        if cut:
            seen[cut] = None
        if len(seen) >= n:
            break
    out = list(seen)
    i = 0
    while len(out) < n:
        out.append(f"{pool[i % len(pool)][:60]} {i}")
        i += 1
    rng.shuffle(out)
    return out[:n]


def open_catalogue(data_home: Path) -> sessionmaker[Session]:
    """Migrate and open the SQLite catalogue of ``data_home``."""
    data_home.mkdir(parents=True, exist_ok=True)
    return open_database(f"sqlite:///{data_home / 'catalogue.db'}").session_factory


def populate(session_factory: sessionmaker[Session], n: int, texts: list[str], *, prefix: str = "bench") -> np.ndarray:
    """Insert ``n`` figures (``FIGURES_PER_ARTICLE`` per article); return their ids (int64, ascending)."""
    n_articles = (n + FIGURES_PER_ARTICLE - 1) // FIGURES_PER_ARTICLE
    with session_factory() as session, session.begin():
        first = session.scalar(select(Article.id).order_by(Article.id.desc()).limit(1)) or 0
        session.execute(
            insert(Article),
            [
                {
                    "key": f"{prefix}:{first + i}",
                    "pmcid": f"PMC{9_000_000 + first + i}",
                    "title": f"Synthetic article {first + i}: {texts[i % len(texts)][:80]}",
                    "journal": ("Radiology Case Reports", "BMC Medical Imaging", "PLoS One")[i % 3],
                    "year": 2000 + i % 25,
                    "license": "CC BY 4.0",
                    "content_hash": hashlib.sha256(f"{prefix}{i}".encode()).hexdigest(),
                    "source": "bench",
                    "extra": {},
                }
                for i in range(n_articles)
            ],
        )
        art_ids = session.scalars(select(Article.id).where(Article.source == "bench").order_by(Article.id)).all()
        art_ids = art_ids[-n_articles:]
        session.execute(
            insert(Figure),
            [
                {
                    "article_id": art_ids[i // FIGURES_PER_ARTICLE],
                    "key": f"fig{i % FIGURES_PER_ARTICLE}",
                    "position": i % FIGURES_PER_ARTICLE,
                    "label": f"Figure {i % FIGURES_PER_ARTICLE + 1}",
                    "caption": texts[i % len(texts)],
                    "image_path": f"media/bench/{i}.jpg",
                    "width": 512,
                    "height": 512,
                    "mentions": [],
                    "extra": {},
                }
                for i in range(n)
            ],
        )
        ids = session.scalars(select(Figure.id).order_by(Figure.id.desc()).limit(n)).all()
    return np.sort(np.asarray(ids, dtype=np.int64))


def vectors(n: int, dim: int, seed: int = 1) -> np.ndarray:
    """``n`` CLIP-like unit vectors of width ``dim`` (:func:`bench.synthetic.embedding_mixture`)."""
    return embedding_mixture(n, MixtureSpec(dim=dim, centers=min(4096, max(16, n // 25))), seed=seed)


def publish_vectors(
    session_factory: sessionmaker[Session],
    index_dir: Path,
    model_id: str,
    ids: np.ndarray,
    xb: np.ndarray,
    *,
    exact_index_max: int = 50_000,
    kind: str = "image",
) -> dict[str, object]:
    """Build the index the indexer would build for ``xb`` and publish it; return its params."""
    if ids.size <= exact_index_max:
        vindex = VectorIndex.exact(xb.shape[1])
        vindex.add(ids, xb)
    else:
        spec = AnnSpec()
        vindex = VectorIndex.train_ivf(xb, spec)
        vindex.add(ids, xb)
        rng = np.random.default_rng(spec.seed + 1)
        pick = np.sort(rng.choice(ids.size, 500, replace=False))
        own, exclude = xb[pick], ids[pick]
        tune_nprobe(vindex, [(own, exact_neighbours(xb, ids, own, 10, exclude), exclude)])
    store = IndexStore(index_dir, model_id)
    with store.writer_lock():
        store.publish(session_factory, kind, vindex, max_embedding_id=0)
    return dict(vindex.params)


def store_embeddings(
    session_factory: sessionmaker[Session], model_id: str, ids: np.ndarray, xb: np.ndarray, kind: str
) -> None:
    """Write ``xb`` as the stored ``kind`` vectors of figures ``ids`` (as ``embed_pending`` would)."""
    dim = int(xb.shape[1])
    for start in range(0, ids.size, 5000):
        with session_factory() as session, session.begin():
            session.execute(
                insert(Embedding),
                [
                    {"figure_id": int(f), "model_id": model_id, "kind": kind, "dim": dim,
                     "vector": np.asarray(v, dtype="<f4").tobytes()}
                    for f, v in zip(ids[start : start + 5000], xb[start : start + 5000], strict=True)
                ],
            )
