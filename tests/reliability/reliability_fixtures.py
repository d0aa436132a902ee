"""Builders and checks shared by the reliability tests (crash safety, backups, hostile input).

- :class:`FakeEncoder`: a deterministic stand-in encoder (no torch): the vector is a function of the
  text / image bytes, so the same input always gives the same vector in any process. Used where
  the subject is durability or validation, not ranking quality.
- :func:`article_package` / :func:`article_zip`: small synthetic PMC-style packages (JATS XML plus
  JPEG figures), each article with its own PMCID and distinct images.
- :func:`make_settings`: Settings confined to a data home (no ``.env``, no environment).
- :func:`assert_consistent`: catalogue, stored embeddings and published indexes agree, and every
  expected article is catalogued, embedded and indexed exactly once.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings

API_KEY = "reliability-key-0123456789"
FAKE_MODEL_ID = "fake-encoder-v1"


class FakeEncoder:
    """Deterministic encoder double: ``sha256(input)`` seeds a unit vector of width ``dim``.

    ``delay_s`` is slept per encode call (it widens the window in which a kill lands mid-embedding).
    """

    model_id = FAKE_MODEL_ID
    dim = 16
    device = "cpu"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def _vec(self, data: bytes) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """One unit vector per text."""
        if self.delay_s:
            time.sleep(self.delay_s)
        return np.stack([self._vec(t.encode()) for t in texts])

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """One unit vector per image (of its decoded pixels)."""
        if self.delay_s:
            time.sleep(self.delay_s)
        return np.stack([self._vec(im.tobytes()) for im in images])


def make_settings(data_home: Path, db_url: str | None = None, **overrides: Any) -> Settings:
    """Settings for ``data_home`` only (no .env file, the fake encoder spec, CPU)."""
    values: dict[str, Any] = {
        "data_home": data_home,
        "database_url": db_url,
        "api_key": API_KEY,
        "model": "fake",
        "run_worker": False,
        "device": "cpu",
        "use_gpu": False,
        "index_poll_s": 0.2,
        "worker_poll_s": 0.1,
        "search_mode": "dense",
        "text_model": None,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def child_env(data_home: Path, db_url: str, **settings: str) -> dict[str, str]:
    """The environment of a CLI child (:mod:`cli_child`) confined to ``data_home`` and ``db_url``: the
    fake encoder, no sentence encoder, CPU, one OpenMP thread, no ``BIOMEDSEARCH_*`` of the caller;
    ``settings`` adds ``BIOMEDSEARCH_<NAME>`` values (``job_stale_s="1.0"``)."""
    import os

    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOMEDSEARCH_")}
    env.update(
        PYTHONPATH=str(repo),
        OMP_NUM_THREADS="1",
        BIOMEDSEARCH_DATA_HOME=str(data_home),
        BIOMEDSEARCH_DATABASE_URL=db_url,
        BIOMEDSEARCH_MODEL="fake",
        BIOMEDSEARCH_TEXT_MODEL="",  # no sentence encoder: the fake CLIP encoder alone
        BIOMEDSEARCH_DEVICE="cpu",
        BIOMEDSEARCH_USE_GPU="false",
    )
    env.update({f"BIOMEDSEARCH_{name.upper()}": value for name, value in settings.items()})
    return env


def jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A small JPEG whose pixels depend on ``seed`` (distinct seeds give distinct images)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).resize(size, Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


TOPICS = ("chest CT", "brain MRI", "western blot", "survival curve", "confocal microscopy", "phylogenetic tree")


def article_xml(pmcid: int, n_figs: int, *, extra_body: str = "", doctype: str = "") -> bytes:
    """A minimal JATS article (PMCID ``pmcid``) with ``n_figs`` figures ``f1..fN`` (graphics ``gN``)."""
    figs = "".join(
        f'<fig id="f{i}"><label>Figure {i}</label><caption><title>{TOPICS[(pmcid + i) % len(TOPICS)]} '
        f"of case {pmcid}</title><p>Panel {i} of article {pmcid}.</p></caption>"
        f'<graphic xlink:href="g{i}"/></fig>'
        for i in range(1, n_figs + 1)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>{doctype}
<article xmlns:xlink="http://www.w3.org/1999/xlink" article-type="research-article">
<front><journal-meta><journal-title-group><journal-title>Journal {pmcid % 3}</journal-title>
</journal-title-group></journal-meta><article-meta><article-id pub-id-type="pmc">{pmcid}</article-id>
<title-group><article-title>Article {pmcid}</article-title></title-group>
<pub-date pub-type="epub"><year>{2000 + pmcid % 20}</year></pub-date></article-meta></front>
<body><p>Body of {pmcid}.</p>{extra_body}{figs}</body></article>""".encode()


def package_members(pmcid: int, n_figs: int) -> list[tuple[str, bytes]]:
    """The files of one article folder ``PMC<pmcid>/``: the XML and one JPEG per figure."""
    folder = f"PMC{pmcid}"
    members = [(f"{folder}/article{pmcid}.nxml", article_xml(pmcid, n_figs))]
    members += [(f"{folder}/g{i}.jpg", jpeg(pmcid * 100 + i)) for i in range(1, n_figs + 1)]
    return members


def tar_gz(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A .tar.gz of regular files ``(name, data)``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A .zip of regular files ``(name, data)``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def article_package(pmcid: int, n_figs: int = 2) -> bytes:
    """A PMC-style package (.tar.gz) of one article."""
    return tar_gz(package_members(pmcid, n_figs))


def article_zip(pmcid: int, n_figs: int = 2) -> bytes:
    """A zipped JATS folder of one article."""
    return zip_bytes(package_members(pmcid, n_figs))


# --- consistency -----------------------------------------------------------------------------------


def assert_consistent(
    factory: sessionmaker[Session],
    data_home: Path,
    index_dir: Path,
    model_id: str,
    expected: dict[str, int],
) -> dict[str, int]:
    """Assert that the catalogue, the stored embeddings and the published indexes agree.

    ``expected`` maps article keys (``pmcid:PMC123``) to their figure counts: each must be in the
    catalogue exactly once with that many figures, each figure with its image file on disk, one
    image and one caption vector, and its id exactly once in each published index. Returns counts.
    """
    from indexer.catalogue import Article, Embedding, Figure
    from indexer.embeddings import KINDS
    from indexer.index_update import check_indexes
    from indexer.publish import IndexStore

    with factory() as s:
        rows = s.execute(
            select(Article.key, func.count(Figure.id))
            .join(Figure, Figure.article_id == Article.id)
            .group_by(Article.key)
        ).all()
        per_article = {key: int(n) for key, n in rows}
        assert per_article == expected, f"catalogue holds {per_article}, expected {expected}"
        figures = s.execute(select(Figure.id, Figure.image_path, Figure.skip_reason)).all()
        per_kind = s.execute(
            select(Embedding.kind, Embedding.figure_id, func.count())
            .where(Embedding.model_id == model_id)
            .group_by(Embedding.kind, Embedding.figure_id)
        ).all()
    figure_ids = np.array(sorted(fid for fid, _, _ in figures), dtype=np.int64)
    for fid, image_path, skip in figures:
        assert image_path is not None, f"figure {fid} has no stored image ({skip})"
        assert (data_home / image_path).is_file(), f"figure {fid}: {image_path} missing on disk"
    for kind in KINDS:
        vec_ids = sorted(fid for k, fid, n in per_kind if k == kind)
        assert all(n == 1 for k, _, n in per_kind if k == kind)
        assert vec_ids == figure_ids.tolist(), f"{kind}: figures with a stored vector differ from the catalogue"
    report = check_indexes(factory, index_dir, model_id, progress=False)
    assert report.ok, report.summary()
    store = IndexStore(index_dir, model_id)
    for kind in KINDS:
        chk = report.kinds[kind]
        assert chk.unencoded == 0 and chk.missing == 0 and chk.stale == 0, chk.line()
        version = store.read_pointer(kind)
        assert version is not None, f"{kind}: nothing published"
        vindex, _ = store.load(kind, version)
        held = vindex.ids()
        assert np.unique(held).size == held.size, f"{kind}: an id is indexed more than once"
        assert np.array_equal(held, figure_ids), f"{kind}: the index does not hold exactly the figures"
    return {"articles": len(per_article), "figures": int(figure_ids.size)}
