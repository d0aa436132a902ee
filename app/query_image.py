"""Query images (``POST /api/search/image``): bounded decoding and a bounded number at once.

An uploaded query image is hostile input until decoded, and it is answered anonymously, so it gets
limits of its own, far below the ingestion ones (:class:`QueryImageLimits`, from ``Settings``):

- **Pixels** (``query_image_max_pixels``, 16 MP): read from the header; a larger image is refused
  (:class:`app.errors.BadQuery`) before any pixel is decoded. A 300 KB 16-bit PNG of 7,700 x 7,700
  px is refused here instead of costing ~0.6 GB.
- **No mode expansion.** The encoders see 224 px, so nothing needs more than an RGB image with
  a shorter side of :data:`DECODE_SIDE` px: a JPEG is decoded at 1/2, 1/4 or 1/8 scale by its own
  DCT (``Image.draft``); other images are box-reduced by an integer factor before their mode is
  converted; 16-bit and 32-bit (``I;16``, ``I``, ``F``) images are scaled to 8 bits in row blocks
  of ~1 M pixels, never through a float copy of the whole image. Peak memory per query is bounded
  by about twice the decoded size of a 16 MP image (~130 MB), measured in
  ``tests/app/test_query_image_limits.py``.
- **Slots** (``query_image_slots``): decoding and encoding run in at most this many requests at
  once; a query waits ``query_image_wait_s`` seconds for a slot, then the answer is
  :class:`app.errors.Busy` (503 with ``Retry-After``).

The body cap (``query_image_max_bytes``, counted while the body streams in) and the optional
per-client rate limit are the HTTP layer's (:mod:`app.api.body_cap`, :mod:`app.rate_limit`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image

from app.config import Settings
from app.errors import BadQuery, Busy
from indexer.images import ImageRejected, open_checked, to_rgb

DECODE_SIDE = 512
"""Decoded query images keep a shorter side of at least this many pixels (the encoders use 224)."""

_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_BLOCK_PIXELS = 1 << 20  # pixels per block when a wide image is scaled to 8 bits


@dataclass(frozen=True)
class QueryImageLimits:
    """The limits of image queries (see the module docstring); :meth:`from_settings` reads them."""

    max_bytes: int = 20 * 1024**2
    max_pixels: int = 16_000_000
    slots: int = 2
    wait_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryImageLimits:
        """The limits configured in ``settings`` (``query_image_*``)."""
        return cls(settings.query_image_max_bytes, settings.query_image_max_pixels, settings.query_image_slots,
                   settings.query_image_wait_s)


def _bad(message: str) -> BadQuery:
    return BadQuery(f"not a usable image: {message}", code="bad_image")


def open_query_image(fh: IO[bytes], max_pixels: int) -> Image.Image:
    """Open an uploaded image from ``fh`` (header only) and check its format and pixel count.

    Returns the lazily decoded image; raises :class:`BadQuery` (code ``bad_image``) when it is not
    an allowed image or has more than ``max_pixels`` pixels.
    """
    try:
        return open_checked(fh, max_pixels=max_pixels, limit="the query-image limit")
    except ImageRejected as exc:
        raise _bad(str(exc)) from exc


def _to_l(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit single-band image linearly scaled to 8 bits (its range onto 0-255), in row
    blocks: the only full-size copies are the decoded array and the 1-byte result."""
    extrema = image.getextrema()  # (min, max) of a single-band image
    lo, hi = float(extrema[0]), float(extrema[1])  # type: ignore[arg-type]
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    pixels = np.asarray(image)
    out = np.empty(pixels.shape, dtype=np.uint8)
    rows = max(1, _BLOCK_PIXELS // max(1, pixels.shape[1]))
    for top in range(0, pixels.shape[0], rows):
        block = pixels[top:top + rows].astype(np.float32)
        block -= lo
        block *= scale
        np.clip(block, 0.0, 255.0, out=block)
        out[top:top + rows] = block
    return Image.fromarray(out)


def reduce_to_rgb(image: Image.Image, side: int = DECODE_SIDE) -> Image.Image:
    """The loaded ``image`` as RGB with a shorter side of at least ``side`` px (box-reduced by the
    largest integer factor that keeps it), without expanding the full-size image beyond RGB."""
    if image.mode in _WIDE_MODES:
        image = _to_l(image)
    elif image.mode == "1":
        image = image.convert("L")
    factor = min(image.size) // side
    if factor >= 2:
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
        image = image.reduce(factor)
    return to_rgb(image)


def decode_query_image(fh: IO[bytes], max_pixels: int, side: int = DECODE_SIDE) -> Image.Image:
    """Decode an uploaded query image from ``fh`` to RGB under the query-image limits.

    The format and pixel cap are checked from the header (:func:`open_query_image`); a JPEG is
    decoded at the smallest DCT scale that keeps ``side`` px (``Image.draft``); the first frame of
    an animation is used. Raises :class:`BadQuery` (code ``bad_image``) for anything unusable.
    """
    image = open_query_image(fh, max_pixels)
    try:
        if image.format == "JPEG":
            image.draft("RGB", (side, side))
        image.load()
        return reduce_to_rgb(image, side)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _bad(f"unreadable ({exc})") from exc


class QueryImageSlots:
    """At most ``limits.slots`` image queries decode and encode at once (owned by the app)."""

    def __init__(self, limits: QueryImageLimits) -> None:
        self.limits = limits
        self._free = threading.BoundedSemaphore(limits.slots)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the block; :class:`Busy` when none frees up within ``limits.wait_s``."""
        if not self._free.acquire(timeout=self.limits.wait_s):
            raise Busy(
                f"{self.limits.slots} image queries are being answered; retry shortly",
                retry_after=max(1, math.ceil(self.limits.wait_s)),
            )
        try:
            yield
        finally:
            self._free.release()
