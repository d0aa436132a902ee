"""The pipeline's ``label`` stage on SQLite and PostgreSQL: every figure typed before it is published,
labels kept per model (an encoder change re-labels every figure; switching back re-uses the stored
labels), a caption-only label redone once the image vector exists, the multi-panel flag from the
caption and from the image's gutters."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sqlalchemy import func, select

from indexer.catalogue import Figure, FigureLabel, open_database
from indexer.figure_types import PROMPTS
from indexer.pipeline import Catalogue, Encoders, ReindexOptions, reindex
from indexer.vocabulary import FigureType, PanelEvidence, Stage

DIM = 32
NAMES = sorted(((name, t) for t, names in PROMPTS.items() for name in names), key=lambda p: -len(p[0]))


class ProbeEncoder:
    """An encoder double whose zero-shot verdict is known: a prompt text maps to its type's axis, any
    other text to a fixed unrelated direction, and every image to the axis of the type it ``sees``."""

    dim = DIM

    def __init__(self, model_id: str, sees: FigureType) -> None:
        self.model_id = model_id
        self.sees = sees

    def _axis(self, kind: FigureType) -> np.ndarray:
        v = np.zeros(DIM, dtype=np.float32)
        v[list(FigureType).index(kind)] = 1.0
        return v

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        out = []
        for text in texts:
            kind = next((t for name, t in NAMES if name in text), None)
            if kind is None:
                v = np.zeros(DIM, dtype=np.float32)
                v[-1] = 1.0
            else:
                v = self._axis(kind)
            out.append(v)
        return np.stack(out)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        return np.stack([self._axis(self.sees) for _ in images])


def _panel_image(path: Path, panels: int) -> None:
    """A textured picture, or ``panels`` of them side by side with white gutters."""
    image = Image.new("RGB", (600, 300), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(panels)
    width = 600 // panels
    for p in range(panels):
        x0 = p * width + (10 if panels > 1 else 0)
        x1 = (p + 1) * width - (10 if panels > 1 else 0)
        for x, y, g in zip(rng.integers(x0, x1, 4000), rng.integers(0, 300, 4000), rng.integers(0, 200, 4000),
                           strict=True):
            draw.point((int(x), int(y)), fill=(int(g),) * 3)
    image.save(path, "JPEG", quality=92)


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """Four figures: silent captions (the image decides), a caption with panel labels, a two-panel image."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    _panel_image(folder / "one.jpg", 1)
    _panel_image(folder / "two.jpg", 2)
    lines = [
        {"id": "f1", "image": "one.jpg", "caption": "Case 1, day 3."},
        {"id": "f2", "image": "one.jpg", "caption": "Case 2. (A) Before and (B) after treatment."},
        {"id": "f3", "image": "two.jpg", "caption": "Case 3, follow-up."},
        {"id": "f4", "image": "missing.jpg", "caption": "Case 4, no image stored."},
    ]
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def catalogue(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    with open_database(db_url) as db:
        yield Catalogue(db.session_factory, home, home / "indexes")


def _run(cat: Catalogue, encoder: ProbeEncoder, sources: list[Path] | None = None, **options: object):  # type: ignore[no-untyped-def]
    opts = ReindexOptions(publish_images_first=False, progress=False, **options)  # type: ignore[arg-type]
    return reindex(sources, cat, Encoders(lambda: encoder), opts)


def _figures(cat: Catalogue) -> dict[str, Figure]:
    with cat.session_factory() as s:
        return {f.key: f for f in s.scalars(select(Figure))}


def _label_rows(cat: Catalogue, model_id: str) -> dict[int, FigureLabel]:
    with cat.session_factory() as s:
        return {r.figure_id: r for r in s.scalars(select(FigureLabel).where(FigureLabel.model_id == model_id))}


def test_an_encoder_change_relabels_every_figure_and_switching_back_reuses_the_stored_labels(
    catalogue: Catalogue, manifest: Path
) -> None:
    ct_model, chart_model = ProbeEncoder("probe-ct", FigureType.CT), ProbeEncoder("probe-chart", FigureType.CHART)
    first = _run(catalogue, ct_model, [manifest])
    assert first.labels is not None and first.labels.labelled == 4 and first.labels.with_image == 3
    figs = _figures(catalogue)
    with_image = {k for k, f in figs.items() if f.image_path}
    assert with_image == {"f1", "f2", "f3"}
    for key, fig in figs.items():
        assert fig.type_model == ct_model.model_id and 0.0 < (fig.type_confidence or 0) <= 1.0
        # the image decides where the caption is silent; without an image the caption alone: other
        assert fig.figure_type == (FigureType.CT if key in with_image else FigureType.OTHER)
    assert len(_label_rows(catalogue, ct_model.model_id)) == 4

    # a new encoder: the pipeline finds every figure unlabelled for it and labels it anew
    second = _run(catalogue, chart_model)
    assert second.labels is not None and second.labels.labelled == 4
    figs = _figures(catalogue)
    assert {k: (f.figure_type, f.type_model) for k, f in figs.items() if k in with_image} == {
        k: (FigureType.CHART, chart_model.model_id) for k in with_image
    }
    assert len(_label_rows(catalogue, ct_model.model_id)) == 4  # the old model's labels are kept
    assert len(_label_rows(catalogue, chart_model.model_id)) == 4

    # the same encoder again: nothing to label
    again = _run(catalogue, chart_model)
    assert again.labels is not None and again.labels.labelled == 0 and again.labels.switched == 0
    # back to the first encoder: its stored labels become current without labelling anything
    back = _run(catalogue, ct_model)
    assert back.labels is not None and back.labels.labelled == 0 and back.labels.switched == 4
    figs = _figures(catalogue)
    assert {figs[k].figure_type for k in with_image} == {FigureType.CT}
    assert {f.type_model for f in figs.values()} == {ct_model.model_id}


def test_a_caption_only_label_is_redone_once_the_image_vector_exists(catalogue: Catalogue, manifest: Path) -> None:
    model = ProbeEncoder("probe-us", FigureType.ULTRASOUND)
    first = _run(catalogue, model, [manifest], skip=frozenset({Stage.EMBED}))  # no vectors yet
    assert first.labels is not None and first.labels.labelled == 4 and first.labels.with_image == 0
    assert {f.figure_type for f in _figures(catalogue).values()} == {FigureType.OTHER}
    assert not any(r.image_used for r in _label_rows(catalogue, model.model_id).values())

    second = _run(catalogue, model)  # embeds, then re-labels the three figures that now have a vector
    assert second.labels is not None and second.labels.labelled == 3 and second.labels.with_image == 3
    rows = _label_rows(catalogue, model.model_id)
    figs = _figures(catalogue)
    assert {k: f.figure_type for k, f in figs.items()} == {
        "f1": FigureType.ULTRASOUND, "f2": FigureType.ULTRASOUND, "f3": FigureType.ULTRASOUND, "f4": FigureType.OTHER
    }
    assert sum(r.image_used for r in rows.values()) == 3


def test_the_multi_panel_flag_comes_from_caption_panel_labels_and_image_gutters(
    catalogue: Catalogue, manifest: Path
) -> None:
    report = _run(catalogue, ProbeEncoder("probe-ct", FigureType.CT), [manifest])
    figs = _figures(catalogue)
    assert {k: (f.multipanel, f.multipanel_evidence) for k, f in figs.items()} == {
        "f1": (False, PanelEvidence.NONE),
        "f2": (True, PanelEvidence.CAPTION),  # "(A) ... (B)", on a single-panel image
        "f3": (True, PanelEvidence.IMAGE),  # two panels with a white gutter, silent caption
        "f4": (False, PanelEvidence.NONE),  # no image: the caption alone
    }
    assert report.labels is not None and (report.labels.panels, report.labels.multipanel) == (4, 2)
    # deleting a figure deletes its labels
    with catalogue.session_factory.begin() as s:
        s.delete(s.get(Figure, figs["f1"].id))
    with catalogue.session_factory() as s:
        assert s.scalar(select(func.count()).select_from(FigureLabel)) == 3
