"""The service's shared encoder: slices of at most SLICE items on the one encoder thread, texts
grouped by length, results in the caller's order."""

from __future__ import annotations

import threading

import numpy as np

from app.search import SLICE, SharedEncoder


class _Recorder:
    """A fake encoder: a text's vector is [len(text), first char code]; records each call."""

    model_id, dim, device = "fake", 2, "cpu"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        self.calls.append((threading.current_thread().name, [len(t) for t in texts]))
        return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float64)

    def encode_images(self, images: list[int], batch_size: int = 64) -> np.ndarray:
        self.calls.append((threading.current_thread().name, list(images)))
        return np.array([[i, 0] for i in images], dtype=np.float64)


def test_texts_go_in_length_slices_and_come_back_in_order() -> None:
    inner = _Recorder()
    rng = np.random.default_rng(0)
    texts = [chr(97 + i % 26) * int(n) for i, n in enumerate(rng.integers(1, 300, 40))]
    out = SharedEncoder(inner).encode_texts(texts, batch_size=64)
    assert out.dtype == np.float32 and out.shape == (40, 2)
    assert out.tolist() == [[len(t), ord(t[0])] for t in texts]
    assert [len(lengths) for _, lengths in inner.calls] == [SLICE, SLICE, 40 - 2 * SLICE]
    flat = [n for _, lengths in inner.calls for n in lengths]
    assert flat == sorted(flat, reverse=True)  # each slice pads only to texts of similar length
    assert len({name for name, _ in inner.calls}) == 1  # all on the one encoder thread
    assert inner.calls[0][0].startswith("encoder")
    assert SharedEncoder(inner).encode_texts([]).shape == (0, 2)


def test_images_keep_their_order_in_slices() -> None:
    inner = _Recorder()
    out = SharedEncoder(inner).encode_images(list(range(20)))  # type: ignore[arg-type]
    assert out[:, 0].tolist() == list(range(20))
    assert [calls for _, calls in inner.calls] == [list(range(16)), list(range(16, 20))]
