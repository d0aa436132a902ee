"""The one re-index pipeline (``indexer.pipeline.reindex``): its stage and publication order, the
batch-build variant, its refusals, and the sharded (torchrun) path, on real article packages."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from indexer.catalogue import Embedding, Figure, open_database
from indexer.pipeline import Catalogue, Encoders, ReindexError, ReindexOptions, reindex
from indexer.publish import LiveIndexes
from indexer.vocabulary import Stage

PACKAGES = ("elife-00353", "pone.0056489")
AFTER_INGEST = frozenset(Stage) - {Stage.FETCH, Stage.INGEST}


class HashEncoder:
    """A deterministic encoder double: sha256 of the text / pixels seeds a unit vector."""

    dim = 8

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    def _vec(self, data: bytes) -> np.ndarray:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(data).digest()[:8], "little"))
        v = rng.standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        return np.stack([self._vec(t.encode()) for t in texts])

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        return np.stack([self._vec(im.convert("RGB").tobytes()) for im in images])


@pytest.fixture
def catalogue(tmp_path: Path):  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    with open_database(f"sqlite:///{home / 'catalogue.db'}") as db:
        yield Catalogue(db.session_factory, home, home / "indexes")


def _sources(shared_data: Path) -> list[Path]:
    return [shared_data / "jats" / "packages" / f"{name}.tar.gz" for name in PACKAGES]


def _sizes(cat: Catalogue, model_id: str) -> tuple[int, int]:
    live = LiveIndexes(cat.index_dir, model_id, use_gpu=False)
    live.refresh()
    return live.ntotal("image"), live.ntotal("caption")


def _count(cat: Catalogue, *where: object) -> int:
    with cat.session_factory() as s:
        return int(s.scalar(select(func.count()).select_from(Figure).where(*where)) or 0)  # type: ignore[arg-type]


def test_new_figures_are_published_with_their_images_before_captions_are_encoded(
    catalogue: Catalogue, shared_data: Path
) -> None:
    clip, text = HashEncoder("clip-test"), HashEncoder("sentence-test")
    started: list[Stage] = []
    published: list[tuple[int, int]] = []

    def on_stage(stage: Stage, done: float, report: object) -> None:
        assert 0.0 <= done <= 1.0
        if done == 0.0:
            started.append(stage)

    options = ReindexOptions(batch_size=4, progress=False)
    report = reindex(
        _sources(shared_data),
        catalogue,
        Encoders(lambda: clip, lambda: text),
        options,
        on_stage,
        on_published=lambda: published.append(_sizes(catalogue, clip.model_id)),
    )
    images = _count(catalogue, Figure.image_path.is_not(None))
    captions = _count(catalogue, Figure.caption != "")
    assert images > 0 and captions > 0
    assert started == [
        Stage.INGEST, Stage.EMBED, Stage.LABEL, Stage.PUBLISH, Stage.CAPTIONS, Stage.PUBLISH_CAPTIONS,
        Stage.CAPTION_CHANNEL,
    ]
    # every figure was typed (and flagged) before the first publication made it searchable
    assert _count(catalogue, Figure.figure_type.is_not(None), Figure.type_model == clip.model_id) == _count(catalogue)
    assert _count(catalogue, Figure.multipanel.is_(None)) == 0
    # the image vectors are searchable before a caption is encoded; then the captions; then the channel
    assert published == [(images, 0), (images, captions), (images, captions)]
    assert _sizes(catalogue, text.model_id) == (0, captions)
    assert report.ingest is not None and len(report.ingest.article_ids) == len(PACKAGES)
    assert report.images is not None and (report.images.images, report.images.captions) == (images, 0)
    assert report.captions is not None and report.captions.captions == captions
    assert set(report.seconds) == {s.value for s in started}
    assert len(report.summaries()) == 8  # ingest, 2 x embed, label, 2 x publish, the channel's embed + index

    # the same sources again: nothing new, so nothing is encoded and the captions are not republished
    started.clear()
    again = reindex(_sources(shared_data), catalogue, Encoders(lambda: clip, lambda: text), options, on_stage)
    assert again.ingest is not None and again.ingest.count("unchanged") == len(PACKAGES)
    assert again.images is not None and again.images.images == 0
    assert again.labels is not None and again.labels.labelled == 0
    assert Stage.PUBLISH_CAPTIONS not in started and Stage.CAPTION_CHANNEL in started


def test_a_batch_build_stores_both_kinds_then_publishes_once(catalogue: Catalogue, shared_data: Path) -> None:
    clip = HashEncoder("clip-test")
    started: list[Stage] = []
    report = reindex(
        _sources(shared_data),
        catalogue,
        Encoders(lambda: clip),  # no caption-channel encoder: no caption channel
        ReindexOptions(publish_images_first=False, progress=False),
        lambda stage, done, _r: started.append(stage) if done == 0.0 else None,
    )
    assert started == [Stage.INGEST, Stage.EMBED, Stage.LABEL, Stage.PUBLISH]
    assert len(report.publications) == 1 and report.captions is None and report.caption_channel is None
    assert report.images is not None and report.images.captions == _count(catalogue, Figure.caption != "")
    assert _sizes(catalogue, clip.model_id) == (
        _count(catalogue, Figure.image_path.is_not(None)),
        _count(catalogue, Figure.caption != ""),
    )


def test_refusals_name_the_problem_and_need_no_encoder(catalogue: Catalogue, tmp_path: Path) -> None:
    def no_encoder() -> HashEncoder:
        raise AssertionError("an encoder must not be asked for")

    encoders = Encoders(no_encoder)
    with pytest.raises(ReindexError, match=r"no longer exist: .*gone\.tar\.gz"):
        reindex([tmp_path / "gone.tar.gz"], catalogue, encoders, ReindexOptions(progress=False))
    not_jats = tmp_path / "notes.nxml"
    not_jats.write_text("<notes>not an article</notes>")
    with pytest.raises(ReindexError, match="no article could be ingested"):
        reindex([not_jats], catalogue, encoders, ReindexOptions(require_articles=True, progress=False))
    # without require_articles an empty ingest is not an error: the other stages find nothing to do
    report = reindex([], catalogue, Encoders(lambda: HashEncoder("clip-test")), ReindexOptions(progress=False))
    assert report.ingest is not None and report.images is not None and report.images.figures == 0


def test_a_shard_encodes_its_figures_and_only_rank_0_publishes(catalogue: Catalogue, shared_data: Path) -> None:
    clip = HashEncoder("clip-test")
    ingest_only = ReindexOptions(skip=AFTER_INGEST, progress=False)
    reindex(_sources(shared_data), catalogue, Encoders(lambda: clip), ingest_only)
    barriers: list[int] = []
    for rank in (1, 0):
        options = ReindexOptions(
            publish_images_first=False,
            rank=rank,
            world_size=2,
            barrier=lambda r=rank: barriers.append(r),  # type: ignore[misc]
            progress=False,
        )
        report = reindex(None, catalogue, Encoders(lambda: clip), options)
        assert report.ingest is None
        assert len(report.publications) == (1 if rank == 0 else 0)
    assert barriers == [1, 0]
    with catalogue.session_factory() as s:
        stored = s.scalar(select(func.count()).select_from(Embedding).where(Embedding.model_id == clip.model_id))
    images, captions = _count(catalogue, Figure.image_path.is_not(None)), _count(catalogue, Figure.caption != "")
    assert stored == images + captions  # the two shards together encoded every figure once
    assert _sizes(catalogue, clip.model_id) == (images, captions)

