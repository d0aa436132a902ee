"""The figure-type classifier: the image's zero-shot scores and the caption's evidence, combined.

Two signals, one answer per figure (a :class:`indexer.vocabulary.FigureType` and a confidence):

- **Image** (:class:`ZeroShot`): BiomedCLIP-style zero-shot classification with the current CLIP
  encoder. Each type is described by a few names (:data:`PROMPTS`), each name is put into BiomedCLIP's
  prompt templates (:data:`training.evaluate.BIOMEDCLIP_TEMPLATES`) and the text embeddings are
  averaged into one class vector (:func:`training.evaluate.class_embeddings`); a figure's stored image
  vector scores ``cos(image, class)`` against each, and ``softmax(scale * cos)`` over the 15 image
  types (``other`` has no prompt) gives its probabilities.
- **Caption** (:func:`indexer.caption_evidence.caption_scores`): modality words in the caption,
  label and mentions.

:func:`combine` adds them in log space: ``image_weight * log p_image(t) + caption_weight *
caption(t)``, with ``other`` scored ``log(1/15)`` by the image (no opinion) plus ``other_bias``;
the softmax of that is the combined distribution, its top type the label and its probability the
confidence. ``p_image`` is the zero-shot softmax with a per-type prior added to its logits
(``image_bias``: how much to trust the encoder on each type; a small encoder trained on CT/MR pairs
knows those two and little else). A figure without an image vector is labelled from its caption
alone (``other`` when the caption names nothing). The weights (:data:`DEFAULT_PARAMS`) were tuned
for the default encoder with ``biomedsearch eval-types --tune`` on the tuning split (MedPix train
and the tune third of the hand-labelled figures), never on the split the README reports; another
encoder needs its own tuning (the command prints the values to put here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from indexer.caption_evidence import TYPES
from indexer.vocabulary import FigureType
from training.encoder_protocol import TextEncoder
from training.evaluate import BIOMEDCLIP_TEMPLATES, class_embeddings

CLASSIFIER_VERSION = "types-1"
"""Stored with every label: a label made by another version is made again by the ``label`` stage."""

T = FigureType
PROMPTS: dict[FigureType, tuple[str, ...]] = {
    T.CT: ("a CT scan", "a computed tomography image", "an axial CT slice"),
    T.MRI: ("an MRI scan", "a magnetic resonance image", "a T2-weighted MR image"),
    T.XRAY: ("an X-ray radiograph", "a chest X-ray", "a plain radiograph"),
    T.ULTRASOUND: ("an ultrasound image", "a sonogram", "an echocardiogram"),
    T.NUCLEAR: ("a nuclear medicine scan", "a PET scan", "a bone scintigraphy"),
    T.ANGIOGRAPHY: ("an angiogram", "a digital subtraction angiography image", "a catheter angiography"),
    T.HISTOLOGY: ("an H&E stained histology section", "a histopathology micrograph", "a light micrograph of tissue"),
    T.FLUORESCENCE: ("an immunofluorescence micrograph", "an immunohistochemistry stained section",
                     "a confocal fluorescence microscopy image"),
    T.ELECTRON: ("an electron micrograph", "a transmission electron microscopy image",
                 "a scanning electron microscopy image"),
    T.PHOTO: ("a clinical photograph", "a photograph of a patient", "a photograph of a surgical specimen"),
    T.ENDOSCOPY: ("an endoscopy image", "a colonoscopy view", "an endoscopic view of the mucosa"),
    T.GEL: ("a western blot", "a gel electrophoresis image", "an immunoblot with protein bands"),
    T.CHART: ("a chart", "a bar graph", "a line plot", "a scatter plot"),
    T.DIAGRAM: ("a schematic diagram", "a flow chart", "an illustration"),
    T.TABLE: ("a table", "a table of numbers", "a table with rows and columns"),
}
"""How each image type is named in the prompt templates (``other`` has none: it is what is left)."""

IMAGE_TYPES: tuple[FigureType, ...] = tuple(t for t in TYPES if t in PROMPTS)
_IMAGE_INDEX = np.array([TYPES.index(t) for t in IMAGE_TYPES])
_OTHER = TYPES.index(FigureType.OTHER)


@dataclass(frozen=True)
class CombineParams:
    """The combination's weights (see the module docstring)."""

    scale: float = 50.0  # zero-shot logit scale: softmax(scale * cosine + image_bias)
    image_weight: float = 1.0
    caption_weight: float = 1.0
    other_bias: float = 2.0  # added to ``other`` (the caption's and the image's silence)
    image_bias: tuple[float, ...] = (0.0,) * 15  # per image type (IMAGE_TYPES order): the zero-shot prior
    caption_gate: float = math.inf  # caption evidence at least this: the caption alone decides

    def describe(self) -> str:
        """The parameters as Python source (what ``eval-types --tune`` prints for :data:`DEFAULT_PARAMS`)."""
        bias = ", ".join(f"{b:g}" for b in self.image_bias)
        gate = "math.inf" if math.isinf(self.caption_gate) else f"{self.caption_gate:g}"
        return (f"CombineParams(scale={self.scale:g}, image_weight={self.image_weight:g}, "
                f"caption_weight={self.caption_weight:g}, other_bias={self.other_bias:g}, image_bias=({bias}), "
                f"caption_gate={gate})")


# Tuned for the default encoder (biomedclip-tiny trained on MedPix train, 600 steps) with
# `biomedsearch eval-types --tune`: mean tune-split macro-F1 86.2 (MedPix train and the hand labels marked
# tune, each counted once). The prior trusts the encoder on CT and MRI (+4), the two types it was trained on.
DEFAULT_PARAMS = CombineParams(
    scale=10.0, image_weight=1.0, caption_weight=4.0, other_bias=1.0,
    image_bias=(4, 4, 0, 0, 0, 0, 0, 0, 0, -4, 0, 0, 2, -4, 0), caption_gate=4.0,
)


class ZeroShot:
    """The zero-shot image classifier of one encoder: its class vectors, built once."""

    def __init__(self, encoder: TextEncoder, templates: Sequence[str] = BIOMEDCLIP_TEMPLATES) -> None:
        self.model_id = encoder.model_id
        prompts = [[template.format(name) for name in PROMPTS[t] for template in templates] for t in IMAGE_TYPES]
        self.weights = class_embeddings(encoder, prompts)  # [len(IMAGE_TYPES), dim]

    def cosines(self, image_vectors: np.ndarray) -> np.ndarray:
        """``[n, len(IMAGE_TYPES)]`` cosine of each (unit) image vector with each class vector."""
        return np.asarray(image_vectors, dtype=np.float32) @ self.weights.T


def image_probabilities(cosines: np.ndarray, scale: float, bias: Sequence[float] | None = None) -> np.ndarray:
    """``[n, len(TYPES)]`` zero-shot probabilities over :data:`TYPES` (``other`` 0) from
    :meth:`ZeroShot.cosines`: ``softmax(scale * cosine + bias)``."""
    logits = scale * np.asarray(cosines, dtype=np.float64)
    if bias is not None:
        logits = logits + np.asarray(bias, dtype=np.float64)[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    out = np.zeros((p.shape[0], len(TYPES)), dtype=np.float64)
    out[:, _IMAGE_INDEX] = p
    return out


def image_types(cosines: np.ndarray) -> list[FigureType]:
    """The image-only prediction for each row of :meth:`ZeroShot.cosines`: the best-scoring type."""
    return [IMAGE_TYPES[int(i)] for i in np.argmax(np.asarray(cosines), axis=1)]


def combine(
    caption: np.ndarray, cosines: np.ndarray | None, params: CombineParams = DEFAULT_PARAMS
) -> np.ndarray:
    """``[n, len(TYPES)]`` combined probabilities.

    ``caption``: ``[n, len(TYPES)]`` caption evidence; ``cosines``: ``[n, len(IMAGE_TYPES)]`` zero-shot
    cosines, with NaN rows (or None) for figures without an image vector.
    """
    caption = np.atleast_2d(np.asarray(caption, dtype=np.float64))
    n = caption.shape[0]
    logits = params.caption_weight * caption
    logits[:, _OTHER] += params.other_bias
    if cosines is not None:
        cos = np.atleast_2d(np.asarray(cosines, dtype=np.float64))
        has = ~np.isnan(cos).any(axis=1) & (caption.max(axis=1) < params.caption_gate)
        if has.any():
            p = image_probabilities(cos[has], params.scale, params.image_bias)
            image = np.log(np.maximum(p, 1e-12))
            image[:, _OTHER] = math.log(1.0 / len(IMAGE_TYPES))
            logits[has] += params.image_weight * image
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    out /= out.sum(axis=1, keepdims=True)
    assert out.shape == (n, len(TYPES))
    return out


def best(probabilities: np.ndarray) -> list[tuple[FigureType, float]]:
    """The top type of each row of :func:`combine` with its probability (the stored confidence)."""
    idx = np.argmax(probabilities, axis=1)
    return [(TYPES[int(i)], float(probabilities[r, int(i)])) for r, i in enumerate(idx)]
