"""The embedding store: encode what is pending, resume after an interruption, read vectors back."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from vector_fixtures import add_figures, factory_for

from indexer.catalogue import Embedding
from indexer.embeddings import (
    EmbeddingError,
    count_pending,
    embed_pending,
    iter_vectors,
    read_vectors,
    store_state,
)


class FakeEncoder:
    """A deterministic stand-in for training.encoders.Encoder (vectors from pixels / text hash)."""

    dim = 16

    def __init__(self, model_id: str = "fake-0000", fail_on_call: int | None = None, dim_out: int = 16) -> None:
        self.model_id = model_id
        self.fail_on_call = fail_on_call
        self.dim_out = dim_out
        self.image_calls = 0

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        self.image_calls += 1
        if self.fail_on_call is not None and self.image_calls == self.fail_on_call:
            raise RuntimeError("simulated crash in the middle of a run")
        return np.stack([image_vector(im, self.dim_out) for im in images])

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        return np.stack([text_vector(t, self.dim_out) for t in texts])


def image_vector(im: Image.Image, dim: int = 16) -> np.ndarray:
    px = np.asarray(im.convert("RGB").resize((4, 4)), dtype=np.float32).ravel()[:dim] + 1.0
    return (px / np.linalg.norm(px)).astype(np.float32)


def text_vector(text: str, dim: int = 16) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def make_images(data_home: Path, n: int) -> list[str]:
    """``n`` small distinct PNGs under data_home/media; their relative paths."""
    (data_home / "media").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rel = f"media/img{i}.png"
        Image.new("RGB", (12, 9), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)).save(data_home / rel)
        paths.append(rel)
    return paths


def test_embeds_each_image_and_caption_once_and_reports_unreadable_images(db_url: str, tmp_path: Path) -> None:
    factory = factory_for(db_url)
    home = tmp_path / "home"
    good = make_images(home, 11)
    (home / "media" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "outside.png").write_bytes((home / good[0]).read_bytes())
    paths: list[str | None] = [*good[:10], None, good[10], "media/corrupt.jpg", "media/missing.png", "../outside.png"]
    captions = [f"figure {i} shows a CT scan" for i in range(10)] + ["caption only", "", "c1", "c2", "c3"]
    fids = add_figures(factory, len(paths), image_paths=paths, captions=captions)
    enc = FakeEncoder()
    assert count_pending(factory, enc.model_id) == 15

    report = embed_pending(factory, enc, home, batch_size=4, progress=False)
    assert (report.figures, report.images, report.captions) == (15, 11, 14)
    assert sorted(f for f, _ in report.failed_images) == fids[12:15]
    assert any("leaves the data home" in why for _, why in report.failed_images)
    assert report.figures_per_s > 0 and "figures/s" in report.summary()

    images = read_vectors(factory, enc.model_id, "image")
    assert images.figure_ids.tolist() == [*fids[:10], fids[11]]
    want = np.stack([image_vector(Image.open(home / p)) for p in good])
    np.testing.assert_allclose(images.vectors, want, rtol=1e-6)
    captions_back = read_vectors(factory, enc.model_id, "caption")
    assert captions_back.figure_ids.tolist() == fids[:11] + fids[12:]
    np.testing.assert_allclose(captions_back.vectors[10], text_vector("caption only"))

    # second run: only the unreadable images are retried; nothing new is stored
    again = embed_pending(factory, enc, home, batch_size=4, progress=False)
    assert (again.figures, again.images, again.captions, len(again.failed_images)) == (3, 0, 0, 3)
    # another model encodes everything independently
    other = embed_pending(factory, FakeEncoder("other-1111"), home, batch_size=64, progress=False)
    assert (other.images, other.captions) == (11, 14)


def test_an_interrupted_run_resumes_where_it_stopped_without_duplicates(db_url: str, tmp_path: Path) -> None:
    factory = factory_for(db_url)
    home = tmp_path / "home"
    fids = add_figures(factory, 20, image_paths=make_images(home, 20))
    crashing = FakeEncoder(fail_on_call=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed_pending(factory, crashing, home, batch_size=4, progress=False)
    state = store_state(factory, crashing.model_id, "image")
    assert state.figure_ids.tolist() == fids[:8]  # two committed batches survived
    assert count_pending(factory, crashing.model_id) == 12

    report = embed_pending(factory, FakeEncoder(), home, batch_size=4, progress=False)
    assert (report.figures, report.images, report.captions) == (12, 12, 12)
    with factory() as s:
        assert s.scalar(select(func.count(Embedding.id))) == 40
    assert count_pending(factory, crashing.model_id) == 0


def test_ranks_split_the_figures_between_them(sqlite_url: str, tmp_path: Path) -> None:
    factory = factory_for(sqlite_url)
    home = tmp_path / "home"
    fids = add_figures(factory, 17, image_paths=make_images(home, 17))
    seen = []
    for rank in range(3):
        report = embed_pending(factory, FakeEncoder(), home, rank=rank, world_size=3, progress=False)
        seen.append(report.figures)
    assert sum(seen) == 17 and all(s >= 5 for s in seen)
    assert store_state(factory, "fake-0000", "image").figure_ids.tolist() == fids
    with pytest.raises(ValueError, match="rank"):
        embed_pending(factory, FakeEncoder(), home, rank=3, world_size=3, progress=False)


def test_iter_vectors_reads_in_id_order_in_chunks_and_ranges(sqlite_url: str, tmp_path: Path) -> None:
    factory = factory_for(sqlite_url)
    home = tmp_path / "home"
    add_figures(factory, 10, image_paths=make_images(home, 10))
    embed_pending(factory, FakeEncoder(), home, progress=False)
    chunks = list(iter_vectors(factory, "fake-0000", "caption", chunk_size=3))
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    eids = np.concatenate([c.embedding_ids for c in chunks])
    assert (np.diff(eids) > 0).all()
    part = read_vectors(factory, "fake-0000", "caption", after_id=int(eids[2]), upto_id=int(eids[6]))
    assert part.embedding_ids.tolist() == eids[3:7].tolist()
    assert part.vectors.dtype == np.float32 and part.vectors.shape == (4, 16)
    with pytest.raises(ValueError, match="kind"):
        list(iter_vectors(factory, "fake-0000", "audio"))


def test_an_encoder_returning_the_wrong_width_is_an_error(sqlite_url: str, tmp_path: Path) -> None:
    factory = factory_for(sqlite_url)
    home = tmp_path / "home"
    add_figures(factory, 2, image_paths=make_images(home, 2))
    with pytest.raises(EmbeddingError, match="shape"):
        embed_pending(factory, FakeEncoder(dim_out=8), home, progress=False)
    assert count_pending(factory, "fake-0000") == 2  # nothing half-stored


def test_real_tiny_encoder_embeds_indexes_and_finds_its_own_figures(
    sqlite_url: str,
    tmp_path: Path,
    shared_data: Path,
    tiny_model_dir: Path,
) -> None:
    """End to end with the project's own trained encoder: MedPix images + captions -> embeddings ->
    published indexes; a figure's own caption (text->caption) and image (image->image) find it."""
    import json
    import shutil

    from indexer.index_update import IndexOptions, update_indexes
    from indexer.publish import LiveIndexes
    from training.encoders import load_encoder

    rows = [json.loads(line) for line in (shared_data / "medpix" / "val.jsonl").read_text().splitlines()[:24]]
    home = tmp_path / "home"
    (home / "media").mkdir(parents=True)
    paths = []
    for row in rows:
        rel = f"media/{Path(row['image']).name}"
        shutil.copyfile(shared_data / "medpix" / row["image"], home / rel)
        paths.append(rel)
    factory = factory_for(sqlite_url)
    fids = add_figures(factory, len(rows), image_paths=paths, captions=[r["caption"] for r in rows])
    encoder = load_encoder(f"local-dir:{tiny_model_dir}", device="cpu")
    report = embed_pending(factory, encoder, home, batch_size=8, progress=False)
    print(report.summary())
    assert (report.images, report.captions, report.failed_images) == (24, 24, [])
    stored = read_vectors(factory, encoder.model_id, "image")
    assert stored.vectors.shape == (24, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(stored.vectors, axis=1), 1.0, atol=1e-4)

    update_indexes(factory, tmp_path / "indexes", encoder.model_id, options=IndexOptions(), progress=False)
    live = LiveIndexes(tmp_path / "indexes", encoder.model_id)
    assert live.refresh() and live.ntotal("image") == live.ntotal("caption") == 24
    captions = list(dict.fromkeys(r["caption"] for r in rows))[:5]
    first_with = [next(f for f, r in zip(fids, rows, strict=True) if r["caption"] == c) for c in captions]
    scores, found = live.search("caption", encoder.encode_texts(captions), 3)
    for want, hits, top in zip(first_with, found, scores[:, 0], strict=True):
        same_text = [f for f, r in zip(fids, rows, strict=True) if r["caption"] == rows[fids.index(want)]["caption"]]
        assert hits[0] in same_text and top > 0.99
    image = Image.open(home / paths[3])
    _, found = live.search("image", encoder.encode_images([image]), 1)
    assert found[0, 0] == fids[3]


def test_image_vectors_first_then_captions(db_url: str, tmp_path: Path) -> None:
    """``kinds`` splits a run: the re-index job makes (and publishes) the image vectors before the captions."""
    factory = factory_for(db_url)
    home = tmp_path / "home"
    paths: list[str | None] = [*make_images(home, 6), None]
    fids = add_figures(factory, len(paths), image_paths=paths)
    enc = FakeEncoder()
    assert count_pending(factory, enc.model_id, kinds=("image",)) == 6
    first = embed_pending(factory, enc, home, batch_size=4, progress=False, kinds=("image",))
    assert (first.figures, first.images, first.captions) == (6, 6, 0)
    assert read_vectors(factory, enc.model_id, "caption").figure_ids.tolist() == []
    assert count_pending(factory, enc.model_id, kinds=("image",)) == 0
    assert count_pending(factory, enc.model_id, kinds=("caption",)) == 7 == count_pending(factory, enc.model_id)
    second = embed_pending(factory, enc, home, batch_size=4, progress=False, kinds=("caption",))
    assert (second.figures, second.images, second.captions) == (7, 0, 7)
    assert read_vectors(factory, enc.model_id, "caption").figure_ids.tolist() == fids
    assert count_pending(factory, enc.model_id) == 0
    with pytest.raises(ValueError, match="kinds must be"):
        embed_pending(factory, enc, home, progress=False, kinds=("pixels",))
