"""Helpers for the API tests: settings for a throwaway data home, a test-double encoder for the
bounds tests (where the model is irrelevant), image bytes."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from service_fixtures import build_home, running_server  # noqa: F401  (shared with the web tests)

from app.config import Settings

API_KEY = "test-key-0123456789"


def make_settings(data_home: Path, db_url: str | None = None, **overrides: Any) -> Settings:
    """Settings confined to ``data_home`` (no .env, no environment surprises for the bounds)."""
    values: dict[str, Any] = {
        "data_home": data_home,
        "database_url": db_url,
        "api_key": API_KEY,
        "run_worker": False,
        "text_model": None,  # the CLIP caption index (tests of the sentence encoder set it)
        "device": "cpu",
        "use_gpu": False,
        "index_poll_s": 0.2,
        "worker_poll_s": 0.1,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class HashEncoder:
    """A deterministic stand-in encoder: the vector is a function of the text / image bytes.

    Used only where the test is about request validation, not about ranking quality.
    """

    model_id = "hash-encoder-test"
    dim = 16
    device = "cpu"

    def __init__(self) -> None:
        self.text_calls = 0

    def _vec(self, data: bytes) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        self.text_calls += len(texts)
        return np.stack([self._vec(t.encode()) for t in texts])

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        return np.stack([self._vec(im.tobytes()) for im in images])


def jpeg_bytes(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small RGB JPEG."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def png_bomb_bytes(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
