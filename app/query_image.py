"""Decoding an uploaded query image for image search."""

from __future__ import annotations

from PIL import Image

from app.errors import BadQuery


def decode_query_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an uploaded query image (format-checked, pixel-capped) to RGB; :class:`BadQuery` if bad."""
    from indexer.images import ImageRejected, open_checked, to_rgb

    try:
        image = open_checked(data, max_pixels=max_pixels)  # format and pixel cap from the header
        image.load()
        return to_rgb(image)
    except ImageRejected as exc:
        raise BadQuery(f"not a usable image: {exc}", code="bad_image") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadQuery(f"not a usable image: unreadable ({exc})", code="bad_image") from exc
