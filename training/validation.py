"""Validation during training: retrieval metrics on held-out pairs, with locked towers' outputs cached.

A frozen tower's validation outputs never change, so they are computed once (see
:mod:`training.feature_cache`) and each validation runs only the trainable heads on them; a tower
that trains is run through the :class:`training.encoders.Encoder`, as at inference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from training.data import Pair
from training.encoders import ClipEncoder as Encoder
from training.evaluate import distinct_captions, retrieval_metrics


@dataclass
class FrozenOutputs:
    """A split's cached outputs of the frozen towers (None where the tower trains)."""

    image: torch.Tensor | None  # [n images, trunk width]: pooled trunk features, before the head
    text: torch.Tensor | None  # [n captions, text width]: pooled text outputs, before the projection


class Validator:
    """Retrieval metrics of the model being trained on ``pairs`` (the protocol of ``biomedsearch eval``)."""

    def __init__(self, pairs: Sequence[Pair], frozen: FrozenOutputs) -> None:
        self.pairs = list(pairs)
        self.captions, self.ids = distinct_captions(self.pairs)
        self.frozen = frozen
        self._images: list[Image.Image] | None = None

    def _pil_images(self) -> list[Image.Image]:
        if self._images is None:
            self._images = [Image.open(p.image).convert("RGB") for p in self.pairs]
        return self._images

    def __call__(self, model: nn.Module, make_encoder: Callable[[], Encoder]) -> dict[str, Any]:
        """Metrics (``text_to_image`` / ``image_to_text`` + counts); the model is left in eval mode."""
        model.eval()
        encoder = make_encoder() if self.frozen.image is None or self.frozen.text is None else None
        with torch.inference_mode():
            if self.frozen.image is not None:
                img = F.normalize(model.visual.head(self.frozen.image), dim=-1).float().cpu().numpy()
            else:
                assert encoder is not None
                img = encoder.encode_images(self._pil_images())
            if self.frozen.text is not None:
                txt = F.normalize(model.text.proj(self.frozen.text), dim=-1).float().cpu().numpy()
            else:
                assert encoder is not None
                txt = encoder.encode_texts(self.captions)
        result: dict[str, Any] = dict(retrieval_metrics(np.asarray(img), np.asarray(txt), self.ids))
        result["pairs"] = len(self.pairs)
        result["distinct_captions"] = len(self.captions)
        return result
