"""What every user of an encoder relies on: the :class:`Encoder` and :class:`TextEncoder` protocols.

The CLIP encoder (:class:`training.encoders.ClipEncoder`) is an :class:`Encoder` (images and
texts into one space); the caption channel's sentence encoder
(:class:`training.sentence_encoder.SentenceEncoder`) is a :class:`TextEncoder`. The indexer
(embedding, caption vectors), the job worker and the search service type their encoders with these,
so test doubles and the service's shared wrapper fit wherever a real model does.

:func:`longest_first` is the order every text batcher shares (the encoders and the service's
shared wrapper): it lives here, beside the protocols, because this module never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image


class TextEncoder(Protocol):
    """Texts -> unit vectors: a stable ``model_id`` (vectors and indexes are stored under it), the
    embedding width ``dim`` and ``encode_texts``."""

    model_id: str
    dim: int

    def encode_texts(self, texts: Sequence[str], batch_size: int = ...) -> np.ndarray:
        """float32 ``[len(texts), dim]``, L2-normalised, in the input order."""
        ...


class Encoder(TextEncoder, Protocol):
    """A CLIP-style encoder: texts and images into one space (what the indexer's image and
    caption vectors and the service's queries need)."""

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = ...) -> np.ndarray:
        """float32 ``[len(images), dim]``, L2-normalised, in the input order."""
        ...


def longest_first(texts: Sequence[object]) -> list[int]:
    """Positions of ``texts`` from the longest to the shortest (by characters): batching texts in
    this order pads each batch only to texts of similar length; results go back by position."""
    return sorted(range(len(texts)), key=lambda i: -len(str(texts[i])))
