"""Image preprocessing split in two: a per-image PIL part and one batched tensor part.

open_clip's transforms end in ``ToTensor`` + ``Normalize``, which run per image as small torch ops.
On a CPU each such op starts torch's thread pool; on a busy machine every one of them waits for
descheduled threads, and converting a 128 px image took ~30 ms instead of ~1 ms (measured with
``bench/train_speed.py``: 27 images/s for decode + transform). :class:`SplitTransform` runs the PIL
part per image (crop / resize / mode, no torch), returns ``uint8`` ``[3, H, W]`` tensors, and
converts and normalises a whole stacked batch in one op. The result is bit-identical to applying
the open_clip transform image by image (same float ops, element by element).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import Compose, Normalize, ToTensor


class SplitTransform:
    """An open_clip image transform as ``pil(image) -> uint8 [3,H,W]`` and ``batch(uint8 [B,3,H,W]) -> float``.

    ``transform`` must be a ``Compose`` ending in ``ToTensor`` (or open_clip's ``MaybeToTensor``) and
    ``Normalize``; anything else runs unchanged through :meth:`pil` (then :meth:`batch` only stacks).
    """

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform
        parts: list[Any] = list(transform.transforms) if isinstance(transform, Compose) else []
        self.split = (len(parts) >= 2 and isinstance(parts[-2], ToTensor) and isinstance(parts[-1], Normalize)
                      and not getattr(parts[-1], "inplace", False))
        if self.split:
            self.head = Compose(parts[:-2]) if parts[:-2] else None
            norm: Normalize = parts[-1]
            self.mean = torch.as_tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.as_tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)

    def pil(self, image: Image.Image) -> torch.Tensor:
        """The per-image part: ``uint8 [3, H, W]`` (or the full float tensor when not split)."""
        if not self.split:
            return self.transform(image)
        out = self.head(image) if self.head is not None else image
        arr = np.asarray(out.convert("RGB") if out.mode != "RGB" else out, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def batch(self, items: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Stacked ``uint8`` images -> float32 ``[B, 3, H, W]`` normalised as open_clip's transform does."""
        stacked = items if isinstance(items, torch.Tensor) else torch.stack(list(items))
        if not self.split:
            return stacked
        return stacked.float().div(255).sub(self.mean).div(self.std)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Preprocess a list of PIL images into one float32 batch."""
        return self.batch([self.pil(im) for im in images])
