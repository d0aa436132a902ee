"""The service's shared encoder: slices of at most SLICE items on the one encoder thread, texts
grouped by length, results in the caller's order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.config import Settings
from app.encoder_host import SLICE, EncoderHost
from app.metrics import Metrics


@pytest.fixture
def host() -> Iterator[EncoderHost]:
    """An encoder host as the app builds one (its own encoder thread, closed afterwards)."""
    encoders = EncoderHost(Settings(_env_file=None), Metrics())  # type: ignore[call-arg]
    yield encoders
    encoders.close()


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


def test_texts_go_in_length_slices_and_come_back_in_order(host: EncoderHost) -> None:
    inner = _Recorder()
    rng = np.random.default_rng(0)
    texts = [chr(97 + i % 26) * int(n) for i, n in enumerate(rng.integers(1, 300, 40))]
    out = host.share(inner).encode_texts(texts, batch_size=64)
    assert out.dtype == np.float32 and out.shape == (40, 2)
    assert out.tolist() == [[len(t), ord(t[0])] for t in texts]
    assert [len(lengths) for _, lengths in inner.calls] == [SLICE, SLICE, 40 - 2 * SLICE]
    flat = [n for _, lengths in inner.calls for n in lengths]
    assert flat == sorted(flat, reverse=True)  # each slice pads only to texts of similar length
    assert len({name for name, _ in inner.calls}) == 1  # all on the one encoder thread
    assert inner.calls[0][0].startswith("encoder")
    assert host.share(inner).encode_texts([]).shape == (0, 2)


def test_images_keep_their_order_in_slices(host: EncoderHost) -> None:
    inner = _Recorder()
    out = host.share(inner).encode_images(list(range(20)))  # type: ignore[arg-type]
    assert out[:, 0].tolist() == list(range(20))
    assert [calls for _, calls in inner.calls] == [list(range(16)), list(range(16, 20))]


def test_each_app_owns_its_encoder_host_and_stops_its_thread(tmp_path: Path) -> None:
    """The encoder host is built by the app's lifespan and held on its services (no module state):
    two apps have two hosts, the search service uses its app's, and shutdown stops the thread."""
    from app_fixtures import HashEncoder, make_settings
    from fastapi.testclient import TestClient

    from app.main import create_app

    apps = [
        create_app(make_settings(tmp_path / name, model="stub"), encoder_loader=lambda s, d: HashEncoder())
        for name in ("a", "b")
    ]
    with TestClient(apps[0]), TestClient(apps[1]):
        hosts = [app.state.services.encoders for app in apps]
        assert hosts[0] is not hosts[1]
        assert all(app.state.services.search.encoders is host for app, host in zip(apps, hosts, strict=True))
        shared = hosts[0].require()
        assert shared.encode_texts(["a query"]).shape == (1, HashEncoder.dim)
    with pytest.raises(RuntimeError):  # the thread was shut down with the app
        shared.encode_texts(["after shutdown"])
