"""Shared model fixtures (a pytest plugin): one tiny encoder trained and exported once per session.

Register with ``pytest_plugins = ["tests.model_fixtures"]`` (or ``-p tests.model_fixtures``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def write_subset(src: Path, dst: Path, n: int) -> Path:
    """Copy the first ``n`` usable lines of a MedPix JSONL to ``dst`` with absolute image paths."""
    from training.data import caption_problem

    lines = []
    with open(src, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if caption_problem(row["caption"]) is not None:
                continue
            row["image"] = str((src.parent / row["image"]).resolve())
            lines.append(json.dumps(row))
            if len(lines) == n:
                break
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


@pytest.fixture(scope="session")
def tiny_model_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``biomedclip-tiny`` encoder after a few real training steps on 64 MedPix train pairs.

    Runs the real entry point (:func:`training.train.train_and_export`) and returns the exported
    open_clip local-dir folder (``load_encoder(f"local-dir:{path}")`` loads it).
    """
    from training.train import train_and_export

    root = tmp_path_factory.mktemp("tiny_model")
    medpix = shared_data / "medpix"
    train = write_subset(medpix / "train.jsonl", root / "train.jsonl", 64)
    val = write_subset(medpix / "val.jsonl", root / "val.jsonl", 32)
    return train_and_export("biomedclip-tiny", train, val, root / "run", epochs=1, batch_size=16, max_steps=3,
                            seed=0, progress=False, resume=False)
