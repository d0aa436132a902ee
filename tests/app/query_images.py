"""Hostile query images built in the tests themselves (no fixture files): 16-bit PNGs of any size
made without holding their pixels in memory, and large JPEGs."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def gray16_png(width: int, height: int, *, gradient: bool = True) -> bytes:
    """A valid 16-bit greyscale PNG of ``width`` x ``height`` (each row a horizontal ramp, or
    zeros), compressed row by row: a 7,700 x 7,700 one is a few hundred KB."""
    if gradient:
        ramp = bytearray()
        for x in range(width):
            ramp += struct.pack(">H", (x * 65535) // max(1, width - 1))
        row = b"\x00" + bytes(ramp)
    else:
        row = b"\x00" * (1 + 2 * width)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def big_jpeg(width: int, height: int) -> bytes:
    """A real RGB JPEG of ``width`` x ``height`` (a smooth two-colour field)."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return buf.getvalue()
