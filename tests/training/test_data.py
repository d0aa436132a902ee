"""Caption hygiene, manifests and leak-free splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data import Pair, caption_problem, filter_pairs, read_pairs, split_by_group
from training.errors import DataError


def test_placeholder_and_near_empty_captions_are_dropped() -> None:
    assert caption_problem("Replace this - DESCRIPTION OF THE IMAGE OR FINDINGS.") == "placeholder"
    assert caption_problem("pelvis") == "near-empty"
    assert caption_problem("  ") == "near-empty"
    assert caption_problem("Axial CT shows a hypodense liver lesion.") is None
    pairs = [Pair(Path("a.jpg"), "Replace this - DESCRIPTION OF THE IMAGE OR FINDINGS.", "c1"),
             Pair(Path("b.jpg"), "pelvis", "c1"), Pair(Path("c.jpg"), "T2 MR of the knee", "c2")]
    kept, dropped = filter_pairs(pairs)
    assert [p.image.name for p in kept] == ["c.jpg"]
    assert dropped == {"placeholder": 1, "near-empty": 1}


def test_medpix_manifest_reads_with_relative_images_and_case_groups(shared_data: Path) -> None:
    pairs = read_pairs(shared_data / "medpix" / "val.jsonl")
    assert len(pairs) == 242
    assert all(p.image.is_file() for p in pairs[:20])
    assert pairs[0].group.startswith("MPX")
    kept, dropped = filter_pairs(pairs)
    assert dropped.get("placeholder") == 13
    assert len(kept) < len(pairs)


def test_split_by_group_never_leaks_a_group() -> None:
    pairs = [Pair(Path(f"{i}.jpg"), f"caption number {i}", f"case{i // 3}") for i in range(300)]
    train, val = split_by_group(pairs, 0.2, seed=1)
    assert len(train) + len(val) == 300
    assert {p.group for p in train}.isdisjoint({p.group for p in val})
    assert 20 < len(val) < 100
    assert split_by_group(pairs, 0.2, seed=1) == (train, val)


def test_bad_manifests_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_pairs(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "x.jpg"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:1"):
        read_pairs(bad)
