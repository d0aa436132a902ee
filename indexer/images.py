"""Figure images: validate, normalise to RGB, store by content hash, make a thumbnail.

:func:`store_image` takes an image file and writes, under ``<media_dir>/<aa>/``:

- ``<sha256>.jpg`` (or ``.png`` for lossless sources): the image normalised to RGB (an RGB JPEG is
  kept byte for byte; anything else is decoded, flattened onto white when transparent, and
  re-encoded), and
- ``<sha256>.thumb.jpg``: a thumbnail whose longest side is at most ``thumbnail_size`` (an RGB
  JPEG that already fits that box is its own thumbnail: ``thumb_path == image_path``).

``sha256`` is the hash of the source file's bytes, so the same file is stored once however many
figures use it, and storing it again is a cheap no-op. Every write is atomic (temporary file in the
same directory, fsync, ``os.replace``).

Refused, with :class:`ImageRejected` and a reason: formats outside :data:`ALLOWED_FORMATS`,
non-images (text posing as ``.jpg``), images over ``max_pixels`` (decompression bombs, checked from
the header before any pixel is decoded), truncated or corrupt images, files over ``max_bytes``.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image, ImageFile, UnidentifiedImageError

from training.fsio import atomic_file

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "TIFF", "BMP", "WEBP"})
_LOSSLESS = frozenset({"PNG", "GIF", "TIFF", "BMP"})
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(ValueError):
    """The file is not an acceptable image; ``str(exc)`` is the reason."""


@dataclass(frozen=True)
class StoredImage:
    """Where an image was stored (paths relative to the data home) and what it is."""

    sha256: str
    image_path: str
    thumb_path: str
    width: int
    height: int
    source_format: str


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of ``img``; transparency is flattened onto white, 16-bit/float modes are scaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = img.convert("F")
        extrema = img.getextrema()
        lo, hi = float(extrema[0]), float(extrema[1])  # type: ignore[arg-type]
        scale = 255.0 / (hi - lo) if hi > lo else 1.0
        img = img.point(lambda v: (v - lo) * scale).convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def open_checked(data: bytes | IO[bytes], *, max_pixels: int, limit: str = "") -> Image.Image:
    """Open ``data`` (bytes or a binary file; the header only, nothing decoded) and check its format
    and pixel count; raise :class:`ImageRejected` otherwise. The one header check of every image the
    project reads: figure images at ingest and query images (``app.query_image``), each with its own
    ``max_pixels``; ``limit`` names that cap in the message (e.g. "the query-image limit")."""
    fh = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        with warnings.catch_warnings():
            # the explicit max_pixels check below decides; Pillow's own global limit only warns
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not an image (unrecognised file content)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageRejected(f"unreadable image: {exc}") from exc
    if img.format not in ALLOWED_FORMATS:
        raise ImageRejected(f"image format {img.format} is not allowed")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected("image has no pixels")
    if width * height > max_pixels:
        raise ImageRejected(
            f"decompression bomb: {width}x{height} = {width * height} pixels, over {limit or max_pixels}"
            + (f" of {max_pixels}" if limit else "")
        )
    return img


def sniff_image(path: Path, *, max_pixels: int) -> str | None:
    """None when ``path`` opens as an allowed image (header check only), else the reason it does not."""
    try:
        with path.open("rb") as fh:
            head = fh.read(64 * 1024)
        open_checked(head, max_pixels=max_pixels)
    except ImageRejected as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable file: {exc}"
    return None


def store_image(
    path: Path,
    data_home: Path,
    *,
    max_pixels: int,
    thumbnail_size: int,
    max_bytes: int,
    fsync: bool = True,
) -> StoredImage:
    """Validate ``path`` and store it (and its thumbnail) under ``<data_home>/media``.

    Returns the stored paths (relative to ``data_home``), the source hash and the pixel size.
    ``fsync=False``: the caller calls :func:`training.fsio.sync_filesystem` before relying on the files.
    Raises ImageRejected with the reason when the file is refused; nothing is written then.
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageRejected(f"image file is {size} bytes, over {max_bytes}")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageRejected(f"unreadable file: {exc}") from exc
    if not data:
        raise ImageRejected("empty file")
    digest = hashlib.sha256(data).hexdigest()
    img = open_checked(data, max_pixels=max_pixels)
    fmt = img.format or ""
    width, height = img.size
    lossless = fmt in _LOSSLESS
    rel_dir = Path("media") / digest[:2]
    rel_image = rel_dir / f"{digest}.{'png' if lossless else 'jpg'}"
    rel_thumb = rel_dir / f"{digest}.thumb.jpg"
    image_file, thumb_file = data_home / rel_image, data_home / rel_thumb
    stored = StoredImage(digest, rel_image.as_posix(), rel_thumb.as_posix(), width, height, fmt)
    if image_file.exists() and thumb_file.exists():
        return stored  # content-addressed: validated and written before

    keep_bytes = fmt == "JPEG" and img.mode == "RGB"
    # A kept JPEG that already fits the thumbnail box is its own thumbnail: it is only decoded
    # (at 1/8 scale, which still reads and so validates the whole stream), never re-encoded.
    own_thumb = keep_bytes and max(width, height) <= thumbnail_size
    if own_thumb:
        stored = StoredImage(digest, rel_image.as_posix(), rel_image.as_posix(), width, height, fmt)
        if image_file.exists():
            return stored
    try:
        if keep_bytes:
            box = (max(1, width // 8), max(1, height // 8)) if own_thumb else (thumbnail_size,) * 2
            img.draft("RGB", box)
        img.load()
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        rgb = to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"truncated or corrupt image: {exc}") from exc

    with atomic_file(image_file, fsync=fsync) as fh:
        if keep_bytes:
            fh.write(data)
        elif lossless:
            rgb.save(fh, format="PNG", optimize=False)
        else:
            rgb.save(fh, format="JPEG", quality=92)
    if not own_thumb:
        thumb = rgb.copy()
        thumb.thumbnail((thumbnail_size, thumbnail_size), Image.Resampling.BICUBIC, reducing_gap=2.0)
        with atomic_file(thumb_file, fsync=fsync) as fh:
            thumb.save(fh, format="JPEG", quality=85)
    return stored
