"""Is a figure multi-panel? Evidence from its caption (panel labels) and from its image (gutters).

- :func:`caption_panels`: the caption names at least two panels: panel letters such as "(A)" and
  "(B)", "(a-c)", "A:" / "B." at the start of a sentence, "a)" and "b)"; or panel words such as
  "left panel", "upper row", "panels"; or two positions such as "(top)" and "(bottom)".
- :func:`image_panels`: the image splits into at least two large parts along a gutter: a band of
  rows (or columns) of one uniform colour that crosses the whole figure, with content on both sides
  (each part at least :data:`MIN_PART` of the figure's content span). JPEGs are decoded at reduced
  size (``draft``) to about :data:`ANALYSIS_SIDE` pixels, so a 100k-figure catalogue is cheap to scan.

:func:`panel_evidence` combines them: multi-panel when either says so, and which did.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from indexer.vocabulary import PanelEvidence

ANALYSIS_SIDE = 800  # the image is analysed at about this longest side (at least this when it is larger)
UNIFORM_RANGE = 24  # a row (column) whose grey levels span at most this (0..255) is uniform
MIN_GAP = 2  # a gutter is at least this many uniform rows (columns) at the analysis size
MIN_PART = 0.15  # each of the two parts a gutter separates spans at least this share of the content

_LETTER = r"[A-Ha-h]"
_SEP = r"\s*(?:[-–—,&/]|and|to)\s*"
_PAREN = re.compile(rf"\(\s*({_LETTER}(?:{_SEP}{_LETTER})*)\s*\)")
_LEAD = re.compile(r"(?:^|[.;:]\s+)([A-H])\s?[.:,)]\s")
_LOWER_PAREN = re.compile(r"(?:^|[\s;.,])([a-h])\)\s")
_PANEL_WORDS = re.compile(
    r"\b(?:left|right|upper|lower|top|bottom|middle|centre|center)(?:[- ](?:left|right))?\s+"
    r"(?:panels?|images?|rows?|columns?|graphs?|plots?|figures?)\b|\bpanels\b|\bpanel\s+[A-Ha-h]\b|"
    r"\bpainéis\b|\bpaneles\b",
    re.IGNORECASE,
)
_POSITION = re.compile(r"(?:\(|\b)(top|bottom|left|right|upper|lower)(?:\)|\s*:)", re.IGNORECASE)


def _letters(group: str) -> set[str]:
    """Panel letters in a parenthesised group: ``"A-C"`` -> A, B, C; ``"a, b"`` -> A, B."""
    found = re.findall(_LETTER, group)
    out = {c.upper() for c in found}
    for a, b in re.findall(rf"({_LETTER})\s*[-–—]\s*({_LETTER})", group):
        lo, hi = sorted((a.upper(), b.upper()))
        out.update(chr(c) for c in range(ord(lo), ord(hi) + 1))
    return out


def caption_panels(caption: str) -> bool:
    """True when the caption names at least two panels (see the module docstring)."""
    if not caption:
        return False
    letters: set[str] = set()
    for group in _PAREN.findall(caption):
        letters |= _letters(group)
    letters |= {m.upper() for m in _LEAD.findall(caption)}
    letters |= {m.upper() for m in _LOWER_PAREN.findall(caption)}
    if len(letters) >= 2:
        return True
    if _PANEL_WORDS.search(caption):
        return True
    return len({m.lower() for m in _POSITION.findall(caption)}) >= 2


def _grey(image: Image.Image) -> np.ndarray:
    """The image as int16 grey levels, at about :data:`ANALYSIS_SIDE` (JPEGs decoded at reduced size)."""
    if image.format == "JPEG":
        image.draft("L", (ANALYSIS_SIDE, ANALYSIS_SIDE))
    grey = image.convert("L")
    if max(grey.size) > 2 * ANALYSIS_SIDE:
        grey.thumbnail((2 * ANALYSIS_SIDE, 2 * ANALYSIS_SIDE), Image.Resampling.BOX)
    return np.asarray(grey, dtype=np.int16)


def _splits(grey: np.ndarray) -> bool:
    """True when a gutter of uniform rows splits the rows of ``grey`` into two large parts."""
    uniform = (grey.max(axis=1) - grey.min(axis=1)) <= UNIFORM_RANGE
    content = np.flatnonzero(~uniform)
    if content.size == 0:
        return False
    first, last = int(content[0]), int(content[-1])
    span = last - first + 1
    inside = uniform[first : last + 1]
    # runs of uniform rows inside the content span (a run never touches its ends: those rows are content)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], inside.astype(np.int8), [0]))))
    starts, ends = edges[0::2], edges[1::2]
    gutters = [(s, e) for s, e in zip(starts, ends, strict=True) if e - s >= MIN_GAP]
    if not gutters:
        return False
    cuts = [0] + [p for s, e in gutters for p in (s, e)] + [span]
    parts = [cuts[i + 1] - cuts[i] for i in range(0, len(cuts), 2)]
    return sum(1 for p in parts if p >= MIN_PART * span) >= 2


def image_panels(image: Image.Image) -> bool:
    """True when uniform gutters split the image into at least two large parts, across or down."""
    grey = _grey(image)
    if min(grey.shape) < 32:
        return False
    return _splits(grey) or _splits(grey.T)


def panel_evidence(caption: bool, image: bool | None) -> PanelEvidence:
    """Which signals found panels (``image`` None: no image to look at)."""
    if caption and image:
        return PanelEvidence.BOTH
    if caption:
        return PanelEvidence.CAPTION
    if image:
        return PanelEvidence.IMAGE
    return PanelEvidence.NONE
