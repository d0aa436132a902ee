"""Image-caption pairs: reading manifests, caption hygiene, group splits, datasets.

A JSONL manifest has one object per line with ``image`` (a path, relative to the manifest's folder
or absolute) and ``caption``; the group that a split must keep together is read from ``case_id``,
``pmcid``, ``article`` or ``group`` (the first present). The catalogue is exported to this format
by the CLI (``training`` does not import ``indexer``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from training.errors import DataError

GROUP_KEYS = ("case_id", "pmcid", "article", "group")
PLACEHOLDER_PATTERNS = (
    re.compile(r"replace this\s*-?\s*description of the image", re.IGNORECASE),
    re.compile(r"^\W*(no caption|caption|untitled|image|figure)\W*$", re.IGNORECASE),
)
_WORD = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class Pair:
    """One image with its caption and the group (case / article) it belongs to."""

    image: Path
    caption: str
    group: str


def caption_problem(caption: str, *, min_words: int = 2) -> str | None:
    """Why ``caption`` is unfit for training (``"placeholder"`` / ``"near-empty"``), or None if it is fine."""
    text = " ".join(caption.split())
    if any(p.search(text) for p in PLACEHOLDER_PATTERNS):
        return "placeholder"
    if len(_WORD.findall(text)) < min_words:
        return "near-empty"
    return None


def caption_key(caption: str) -> str:
    """Normalised caption used to decide which captions are identical (multi-positive targets)."""
    return " ".join(caption.lower().split())


def read_pairs(path: str | Path) -> list[Pair]:
    """Read a JSONL manifest of image/caption pairs (see module docstring).

    Raises :class:`DataError` when the file is missing, a line is malformed or lacks a field.
    """
    manifest = Path(path).expanduser()
    if not manifest.is_file():
        raise DataError(f"pairs file not found: {manifest}")
    base = manifest.resolve().parent
    pairs: list[Pair] = []
    with open(manifest, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image, caption = row["image"], row["caption"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{manifest}:{lineno}: expected a JSON object with image and caption ({exc})") from exc
            if not isinstance(image, str) or not isinstance(caption, str):
                raise DataError(f"{manifest}:{lineno}: image and caption must be strings")
            group = next((str(row[k]) for k in GROUP_KEYS if row.get(k)), str(row.get("id", lineno)))
            img_path = Path(image)
            pairs.append(Pair(img_path if img_path.is_absolute() else base / img_path, caption, group))
    return pairs


def filter_pairs(pairs: Iterable[Pair], *, min_words: int = 2) -> tuple[list[Pair], dict[str, int]]:
    """Drop placeholder and near-empty captions. Returns (kept pairs, counts of dropped by reason)."""
    kept: list[Pair] = []
    dropped: dict[str, int] = {}
    for pair in pairs:
        problem = caption_problem(pair.caption, min_words=min_words)
        if problem is None:
            kept.append(pair)
        else:
            dropped[problem] = dropped.get(problem, 0) + 1
    return kept, dropped


def split_by_group(pairs: Sequence[Pair], val_fraction: float, *, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Split pairs into (train, val) so that no group (case / article) is on both sides.

    The assignment of a group depends only on its name and ``seed`` (stable as data grows).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train: list[Pair] = []
    val: list[Pair] = []
    for pair in pairs:
        digest = hashlib.sha256(f"{seed}:{pair.group}".encode()).digest()
        (val if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else train).append(pair)
    return train, val


def write_pairs_jsonl(pairs: Iterable[Pair], path: str | Path) -> int:
    """Write pairs as a JSONL manifest (absolute image paths); returns the number of lines."""
    out = Path(path)
    n = 0
    with open(out, "w", encoding="utf-8") as fh:
        for pair in pairs:
            fh.write(json.dumps({"image": str(pair.image), "caption": pair.caption, "group": pair.group}) + "\n")
            n += 1
    return n


class PairDataset(Dataset[tuple[torch.Tensor, int]]):
    """Map-style dataset of (transformed image, caption index); captions are deduplicated by key.

    ``captions[i]`` is the text of caption index ``i``; equal indices mark identical captions.
    Images are decoded once and kept in memory (small data); ``transform`` runs on every access.
    """

    def __init__(self, pairs: Sequence[Pair], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        if not pairs:
            raise DataError("no image-caption pairs left to train on")
        self.pairs = list(pairs)
        self.transform = transform
        index: dict[str, int] = {}
        self.captions: list[str] = []
        self.caption_ids: list[int] = []
        for pair in self.pairs:
            key = caption_key(pair.caption)
            if key not in index:
                index[key] = len(self.captions)
                self.captions.append(pair.caption)
            self.caption_ids.append(index[key])
        self._images: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def load_image(self, i: int) -> Image.Image:
        """Decode image ``i`` as RGB (raises :class:`DataError` for a missing or unreadable file)."""
        if i not in self._images:
            try:
                self._images[i] = self.pairs[i].image.read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read image {self.pairs[i].image}: {exc}") from exc
        try:
            return Image.open(io.BytesIO(self._images[i])).convert("RGB")
        except OSError as exc:
            raise DataError(f"cannot decode image {self.pairs[i].image}: {exc}") from exc

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.load_image(i)), self.caption_ids[i]

