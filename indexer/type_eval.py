"""Measured accuracy of the figure-type classifier and the multi-panel flag (``biomedsearch eval-types``).

Two kinds of truth:

- **MedPix** (``medpix/{train,val}.jsonl``): the ``modality`` field says CT or MR for every image
  (``CT ...`` -> ``ct``; ``MR ...`` and ``MRA ...`` -> ``mri``; the two virtual colonoscopies are left
  out). Real images and their real captions.
- **Hand labels** (``tests/fixtures/figure_types.jsonl``, one object a line with the reason for its
  label): figures of the shared JATS packages (with their images where the package has them),
  tables set as images, ROCO captions (no images: their type is what the caption says), and MedPix
  images looked at for the multi-panel flag. Each line carries ``split``: ``tune`` or ``test``.

The three classifiers compared: **image only** (zero-shot argmax over the image types;
:attr:`FigureType.OTHER` for a figure without an image), **caption only**
(:func:`indexer.caption_evidence.caption_type`) and **combined** (:func:`indexer.figure_types.combine`
with the given weights). :func:`tune` chooses the combination's weights on the tune split (MedPix
train + the hand labels marked ``tune``); the report is on MedPix val and the hand labels marked
``test``. Nothing here reads the catalogue: items are scored directly from the files.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from indexer.caption_evidence import TYPES, caption_scores, caption_type
from indexer.figure_types import IMAGE_TYPES, CombineParams, ZeroShot, best, combine, image_types
from indexer.jats import flatten, local, parse_jats_file, parse_xml
from indexer.panels import caption_panels, image_panels
from indexer.vocabulary import FigureType
from training.encoder_protocol import Encoder

METHODS = ("image", "caption", "combined")
GRID = {
    "scale": (10.0, 25.0, 50.0, 100.0),
    "image_weight": (1.0,),
    "caption_weight": (0.25, 0.5, 1.0, 2.0, 4.0),
    "other_bias": (0.0, 1.0, 2.0, 3.0, 4.0),
    "caption_gate": (2.0, 3.0, 4.0, 6.0, math.inf),
}
"""The weights :func:`tune` tries (every combination)."""


class EvalError(ValueError):
    """A labels file or a data folder that cannot be read as described (the message says where)."""


@dataclass
class Item:
    """One figure to classify, with its truth."""

    id: str
    truth: FigureType
    multipanel: bool | None  # None: not judged (no image to look at)
    split: str  # tune / test
    source: str  # medpix-train / medpix-val (truth from the metadata) or the hand label's source
    caption: str
    title: str | None = None
    label: str | None = None
    mentions: list[str] = field(default_factory=list)
    image: Path | None = None


def modality_type(modality: str) -> FigureType | None:
    """MedPix's ``modality`` as a figure type: CT..., MR... / MRA... -> ct / mri; others None."""
    head = modality.strip().upper()
    if head.startswith("CT"):
        return FigureType.CT
    if head.startswith("MR"):
        return FigureType.MRI
    return None


def medpix_items(jsonl: Path, split: str) -> list[Item]:
    """The CT and MR images of a MedPix JSONL (``split``: what the items count as, tune or test)."""
    out: list[Item] = []
    for number, line in enumerate(_lines(jsonl), start=1):
        row = _json(line, jsonl, number)
        kind = modality_type(str(row.get("modality") or ""))
        if kind is None:
            continue
        out.append(Item(f"medpix:{row['id']}", kind, None, split, f"medpix-{jsonl.stem}", str(row.get("caption") or ""),
                        image=jsonl.parent / str(row["image"])))
    return out


def hand_items(labels: Path, data: Path) -> list[Item]:
    """The hand-labelled figures of ``labels``, their captions and images read from ``data`` (the
    shared data folder). Raises :class:`EvalError` naming a line whose figure cannot be found."""
    roco = _roco_captions(data / "roco-captions" / "captions.tsv")
    medpix = {
        str(r["id"]): r for split in ("train", "val")
        for r in (json.loads(x) for x in _lines(data / "medpix" / f"{split}.jsonl"))
    }
    articles: dict[str, Any] = {}
    out: list[Item] = []
    for number, line in enumerate(_lines(labels), start=1):
        row = _json(line, labels, number)
        try:
            kind = FigureType(row["type"])
            split = str(row["split"])
            if split not in ("tune", "test") or not str(row.get("reason") or "").strip():
                raise ValueError("split must be tune or test, and the label needs a reason")
            item = _hand_item(row, kind, data, roco, medpix, articles)
        except (KeyError, ValueError, OSError) as exc:
            raise EvalError(f"{labels}:{number}: {exc}") from None
        out.append(item)
    return out


def _hand_item(row: dict[str, Any], kind: FigureType, data: Path, roco: dict[str, str],
               medpix: dict[str, dict[str, Any]], articles: dict[str, Any]) -> Item:
    source = str(row["source"])
    image = data / row["image"] if row.get("image") else None
    if image is not None and not image.is_file():
        raise ValueError(f"no image {image}")
    item = Item(str(row["id"]), kind, row.get("multipanel"), str(row["split"]), source, "", image=image)
    if source == "roco":
        item.caption = roco[str(row["roco_id"])]
    elif source == "medpix":
        rec = medpix[str(row["medpix_id"])]
        item.caption, item.image = str(rec.get("caption") or ""), data / "medpix" / str(rec["image"])
    elif source == "jats":
        path = data / str(row["xml"])
        record = articles.get(str(path)) or articles.setdefault(str(path), parse_jats_file(path))
        fig = next((f for f in record.figures if f.key_base == row["fig"]), None)
        if fig is None:
            raise ValueError(f"no figure {row['fig']!r} in {path}")
        item.caption, item.title, item.label = fig.caption, fig.caption_title, fig.label
        item.mentions = list(fig.mentions)
    elif source == "jats-table":
        item.label, item.caption = _table(data / str(row["xml"]), str(row["table"]))
    else:
        raise ValueError(f"unknown source {source!r}")
    return item


def _table(path: Path, table_id: str) -> tuple[str | None, str]:
    """The label and caption of ``<table-wrap id=table_id>`` in the article XML at ``path``."""
    root, _ = parse_xml(path.read_bytes())
    for el in root.iter():
        if local(el.tag) == "table-wrap" and el.get("id") == table_id:
            label = next((flatten(c) for c in el if local(c.tag) == "label"), None)
            caption = next((flatten(c) for c in el if local(c.tag) == "caption"), "")
            return label, caption
    raise ValueError(f"no table-wrap {table_id!r} in {path}")


def _roco_captions(path: Path) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return {row["roco_id"]: row["caption"] for row in csv.DictReader(fh, delimiter="\t")}
    except (OSError, KeyError) as exc:
        raise EvalError(f"cannot read the ROCO captions at {path}: {exc}") from None


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise EvalError(f"cannot read {path}: {exc}") from None


def _json(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise EvalError(f"{path}:{number}: not JSON ({exc})") from None
    if not isinstance(row, dict):
        raise EvalError(f"{path}:{number}: not a JSON object")
    return row


# --- scoring ---------------------------------------------------------------------------------------


@dataclass
class Scored:
    """Items with both signals computed once: caption evidence, zero-shot cosines (NaN rows where
    there is no image), and the two panel verdicts."""

    items: list[Item]
    evidence: np.ndarray  # [n, len(TYPES)]
    cosines: np.ndarray  # [n, len(IMAGE_TYPES)]
    caption_panels: list[bool]
    image_panels: list[bool | None]

    def subset(self, keep: Iterable[bool]) -> Scored:
        """The items where ``keep`` is true."""
        mask = np.fromiter(keep, dtype=bool, count=len(self.items))
        idx = np.flatnonzero(mask)
        return Scored([self.items[i] for i in idx], self.evidence[idx], self.cosines[idx],
                      [self.caption_panels[i] for i in idx], [self.image_panels[i] for i in idx])

    def combined(self, params: CombineParams) -> list[FigureType]:
        """The combined classifier's prediction for every item."""
        return [t for t, _ in best(combine(self.evidence, self.cosines, params))]

    def predict(self, params: CombineParams) -> dict[str, list[FigureType]]:
        """Each method's prediction for every item."""
        has_image = ~np.isnan(self.cosines).any(axis=1)
        image = image_types(np.nan_to_num(self.cosines))
        return {
            "image": [t if ok else FigureType.OTHER for t, ok in zip(image, has_image, strict=True)],
            "caption": [caption_type(e) for e in self.evidence],
            "combined": self.combined(params),
        }


def score(items: Sequence[Item], encoder: Encoder, *, batch_size: int = 32, progress: bool = True) -> Scored:
    """Compute both signals for ``items`` with ``encoder`` (images encoded in batches)."""
    zero_shot = ZeroShot(encoder)
    cosines = np.full((len(items), len(IMAGE_TYPES)), np.nan, dtype=np.float32)
    with_image = [i for i, item in enumerate(items) if item.image is not None]
    panels: list[bool | None] = [None] * len(items)
    bar = tqdm(total=len(with_image), unit="img", desc=f"encode {encoder.model_id}", disable=not progress, leave=False)
    for start in range(0, len(with_image), batch_size):
        chunk = with_image[start : start + batch_size]
        images = []
        for i in chunk:
            path = items[i].image
            assert path is not None
            with Image.open(path) as im:
                panels[i] = image_panels(im)
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        cosines[chunk] = zero_shot.cosines(encoder.encode_images(images, batch_size=len(images)))
        bar.update(len(chunk))
    bar.close()
    evidence = np.stack([
        caption_scores(it.caption, title=it.title, label=it.label, mentions=it.mentions) for it in items
    ]) if items else np.zeros((0, len(TYPES)), dtype=np.float32)
    caption = [caption_panels(" ".join(p for p in (it.title, it.caption) if p)) for it in items]
    return Scored(list(items), evidence, cosines, caption, panels)


# --- metrics ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeScore:
    """Precision, recall and F1 of one type (``support``: items whose truth it is)."""

    kind: FigureType
    support: int
    predicted: int
    precision: float
    recall: float
    f1: float


def per_type(truth: Sequence[FigureType], predicted: Sequence[FigureType]) -> list[TypeScore]:
    """Scores of every type that is in the truth or predicted, in vocabulary order."""
    out = []
    for kind in TYPES:
        support = sum(t is kind for t in truth)
        made = sum(p is kind for p in predicted)
        if not support and not made:
            continue
        hits = sum(t is kind and p is kind for t, p in zip(truth, predicted, strict=True))
        precision = hits / made if made else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(TypeScore(kind, support, made, precision, recall, f1))
    return out


def macro_f1(truth: Sequence[FigureType], predicted: Sequence[FigureType]) -> float:
    """The mean F1 over the types present in the truth (a wrong prediction of another type still
    costs the true type its recall; a set whose truth is only CT and MR is scored on those two)."""
    scores = [s for s in per_type(truth, predicted) if s.support]
    return float(np.mean([s.f1 for s in scores])) if scores else 0.0


def flag_scores(truth: Sequence[bool], flagged: Sequence[bool]) -> dict[str, float]:
    """Precision and recall of a yes/no flag, with the counts."""
    tp = sum(t and f for t, f in zip(truth, flagged, strict=True))
    made, positives = sum(flagged), sum(truth)
    return {"precision": tp / made if made else 0.0, "recall": tp / positives if positives else 0.0,
            "flagged": made, "positives": positives, "n": len(truth)}


def panel_report(scored: Scored) -> dict[str, dict[str, float]]:
    """Multi-panel precision / recall of the caption flag, the image flag and the combined flag (either)
    over the items with a judged truth (the image flag over those with an image)."""
    rows = [(it.multipanel, c, i) for it, c, i in zip(scored.items, scored.caption_panels, scored.image_panels,
                                                      strict=True) if it.multipanel is not None]
    with_image = [(t, c, i) for t, c, i in rows if i is not None]
    return {
        "caption": flag_scores([bool(t) for t, _, _ in rows], [c for _, c, _ in rows]),
        "image": flag_scores([bool(t) for t, _, _ in with_image], [bool(i) for _, _, i in with_image]),
        "combined": flag_scores([bool(t) for t, _, _ in rows], [c or bool(i) for _, c, i in rows]),
    }


BIAS_STEPS = (-6.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)
"""The per-type zero-shot priors :func:`tune` tries, one type at a time."""


def tune(
    scored: Scored, grid: Mapping[str, Sequence[float]] = GRID, bias_steps: Sequence[float] = BIAS_STEPS,
    rounds: int = 2,
) -> tuple[CombineParams, float]:
    """The weights with the best combined macro-F1 on ``scored`` (the tune split), and that score.

    The score is the mean of the macro-F1 on the MedPix figures (metadata truth) and on the
    hand-labelled ones, so that the 1,367 MedPix train images do not outvote the hand labels' many
    types. The grid of :data:`GRID` first (no priors), then ``rounds`` of coordinate ascent: each
    image type's prior set to the best of ``bias_steps`` in turn (ties go to the smallest prior),
    then the grid again with those priors. Deterministic."""
    truth = [it.truth for it in scored.items]
    names = list(grid)
    medpix = [it.source.startswith("medpix-") for it in scored.items]
    groups = [g for g in ([i for i, m in enumerate(medpix) if m], [i for i, m in enumerate(medpix) if not m]) if g]

    def value(params: CombineParams) -> float:
        predicted = scored.combined(params)
        return float(np.mean([macro_f1([truth[i] for i in g], [predicted[i] for i in g]) for g in groups]))

    def search_grid(bias: tuple[float, ...]) -> tuple[CombineParams, float]:
        found, found_value = CombineParams(image_bias=bias), -1.0
        for values in itertools.product(*(grid[n] for n in names)):
            params = CombineParams(**dict(zip(names, values, strict=True)), image_bias=bias)
            v = value(params)
            if v > found_value + 1e-9:
                found, found_value = params, v
        return found, found_value

    best_params, best_value = search_grid((0.0,) * len(IMAGE_TYPES))
    for _ in range(rounds):
        bias = list(best_params.image_bias)
        for j in range(len(IMAGE_TYPES)):
            trials = []
            for step in bias_steps:
                bias[j] = step
                trials.append((value(replace(best_params, image_bias=tuple(bias))), -abs(step), step))
            bias[j] = max(trials)[2]
        params, v = search_grid(tuple(bias))
        if v <= best_value + 1e-9:
            break
        best_params, best_value = params, v
    return best_params, best_value


def summary(scored: Scored, params: CombineParams) -> dict[str, Any]:
    """Per-type scores and macro-F1 of each method on ``scored``."""
    truth = [it.truth for it in scored.items]
    predicted = scored.predict(params)
    return {
        "n": len(truth),
        "macro_f1": {m: macro_f1(truth, predicted[m]) for m in METHODS},
        "per_type": {m: per_type(truth, predicted[m]) for m in METHODS},
    }
