"""The figure-type evaluation: the hand-labelled fixture resolves against the shared data (every line a
known type, a split, a reason, a figure that exists), MedPix's modality field maps to CT / MRI, and
the metrics and the tuning do what their names say."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from indexer.caption_evidence import TYPES
from indexer.figure_types import IMAGE_TYPES, CombineParams
from indexer.type_eval import (
    EvalError,
    Item,
    Scored,
    flag_scores,
    hand_items,
    macro_f1,
    medpix_items,
    modality_type,
    per_type,
    tune,
)
from indexer.vocabulary import FigureType

LABELS = Path(__file__).resolve().parents[1] / "fixtures" / "figure_types.jsonl"
T = FigureType


def test_the_hand_labels_resolve_and_cover_every_type(shared_data: Path) -> None:
    rows = [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines()]
    assert len({r["id"] for r in rows}) == len(rows) >= 150
    assert all(len(r["reason"]) >= 8 for r in rows)
    items = hand_items(LABELS, shared_data)
    assert len(items) == len(rows)
    assert all(it.image is not None for it in items if not it.caption.strip())  # no caption: an image to look at
    assert all(it.image is None or it.image.is_file() for it in items)
    types = Counter(it.truth for it in items)
    assert set(types) == set(FigureType)  # every type has at least one labelled figure
    tests = Counter(it.split for it in items)
    assert tests["test"] > tests["tune"] > 0
    judged = [it for it in items if it.multipanel is not None]
    assert all(it.image is not None for it in judged)  # the flag's truth was judged by looking at the image
    assert 0 < sum(bool(it.multipanel) for it in judged) < len(judged)


def test_a_bad_label_line_names_its_file_and_line(tmp_path: Path, shared_data: Path) -> None:
    bad = tmp_path / "labels.jsonl"
    bad.write_text(json.dumps({"id": "x", "source": "roco", "roco_id": "ROCO_00001", "type": "xrays",
                               "split": "test", "reason": "a typo in the type"}) + "\n")
    with pytest.raises(EvalError, match=r"labels\.jsonl:1: "):
        hand_items(bad, shared_data)


def test_medpix_modalities_map_to_ct_and_mri(shared_data: Path) -> None:
    assert modality_type("CT w/contrast (IV)") is T.CT
    assert modality_type(" MR - Montage of Images") is T.MRI
    assert modality_type("MRA - MR Angiography/Venography") is T.MRI
    assert modality_type("Virtual Colonoscopy") is None
    val = medpix_items(shared_data / "medpix" / "val.jsonl", "test")
    assert len(val) == 240 and {it.truth for it in val} == {T.CT, T.MRI}


def test_precision_recall_and_macro_f1() -> None:
    truth = [T.CT, T.CT, T.MRI, T.CHART]
    predicted = [T.CT, T.MRI, T.MRI, T.OTHER]
    scores = {s.kind: s for s in per_type(truth, predicted)}
    assert (scores[T.CT].precision, scores[T.CT].recall) == (1.0, 0.5)
    assert (scores[T.MRI].precision, scores[T.MRI].recall) == (0.5, 1.0)
    assert scores[T.CHART].f1 == 0.0 and scores[T.OTHER].support == 0 and scores[T.OTHER].predicted == 1
    assert macro_f1(truth, predicted) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)  # the types in the truth
    assert flag_scores([True, True, False], [True, False, True]) == {
        "precision": 0.5, "recall": 0.5, "flagged": 2, "positives": 2, "n": 3
    }


def test_tuning_finds_the_caption_weight_that_lets_a_right_caption_beat_a_wrong_image() -> None:
    """Images that all lean to MRI, captions that name the truth: only a large enough caption weight
    gets them right, and tuning finds one."""
    n = 6
    truth = [T.CT, T.XRAY, T.ULTRASOUND] * 2
    evidence = np.zeros((n, len(TYPES)), dtype=np.float32)
    for i, kind in enumerate(truth):
        evidence[i, TYPES.index(kind)] = 1.0
    cosines = np.full((n, len(IMAGE_TYPES)), 0.25, dtype=np.float32)
    cosines[:, IMAGE_TYPES.index(T.MRI)] = 0.35
    items = [Item(str(i), kind, None, "tune", "test", "") for i, kind in enumerate(truth)]
    scored = Scored(items, evidence, cosines, [False] * n, [None] * n)
    weak = CombineParams(scale=50.0, caption_weight=0.25, other_bias=0.0)
    assert macro_f1(truth, scored.predict(weak)["combined"]) < 1.0
    params, value = tune(scored, {"scale": (50.0,), "image_weight": (1.0,), "caption_weight": (0.25, 8.0),
                                  "other_bias": (0.0,)})
    assert params.caption_weight == 8.0 and value == 1.0
