"""Query images get their own limits (issue 17, finding 1): a body cap counted while it streams
in, a pixel cap read from the header, decoding without mode expansion (measured: peak memory of
the decode path in a fresh process), a bounded number decoded and encoded at once (503 with
Retry-After when full) and an optional per-client rate limit (429). Every hostile input is built
here (:mod:`query_images`)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import HashEncoder, jpeg_bytes, make_settings
from fastapi.testclient import TestClient
from PIL import Image
from query_images import big_jpeg, gray16_png

from app.errors import BadQuery
from app.main import create_app
from app.query_image import DECODE_SIDE, decode_query_image
from app.rate_limit import RateLimiter

REPO = Path(__file__).resolve().parents[2]
URL = "/api/search/image"


def _error(resp: object, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text  # type: ignore[attr-defined]
    assert resp.headers["content-type"].startswith("application/json")  # type: ignore[attr-defined]
    body = resp.json()["error"]  # type: ignore[attr-defined]
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code
    return body


def _files(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path_factory.mktemp("qimg") / "home", model="stub",
        max_upload_bytes=50 * 1024**2, query_image_max_bytes=4 * 1024**2,
    )
    with TestClient(create_app(settings, encoder_loader=lambda s, d: HashEncoder())) as c:
        yield c


# --- the pixel cap and decoding ------------------------------------------------------------------


def test_a_16_bit_png_of_7700_squared_is_refused_from_its_header(client: TestClient) -> None:
    data = gray16_png(7700, 7700, gradient=False)
    assert len(data) < 1024**2  # a few hundred KB on the wire, 59 MP (0.6 GB decoded the old way)
    body = _error(client.post(URL, files={"file": ("x.png", data)}), 422, "bad_image")
    assert "7700x7700" in body["message"] and "16000000" in body["message"]


def test_an_image_at_the_cap_is_answered(client: TestClient) -> None:
    resp = client.post(URL, files={"file": ("q.png", gray16_png(4000, 4000))}, data={"mode": "image"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["mode"] == "image"


def test_16_bit_images_are_scaled_to_8_bits_and_reduced() -> None:
    out = decode_query_image(io.BytesIO(gray16_png(4000, 4000)), 16_000_000)
    assert out.mode == "RGB" and DECODE_SIDE <= min(out.size) < 2 * DECODE_SIDE
    lo, hi = out.getchannel(0).getextrema()  # type: ignore[misc]
    assert lo <= 2 and hi >= 250  # the ramp keeps its contrast (its range mapped onto 0-255)
    ramp = np.asarray(out.getchannel(0))[0]
    assert np.all(np.diff(ramp.astype(int)) >= 0)  # and its order


def test_jpegs_are_decoded_at_a_reduced_dct_scale() -> None:
    out = decode_query_image(io.BytesIO(big_jpeg(4096, 3072)), 16_000_000)
    assert out.mode == "RGB" and DECODE_SIDE <= min(out.size) < 2 * DECODE_SIDE
    small = decode_query_image(io.BytesIO(jpeg_bytes((300, 200))), 16_000_000)
    assert small.size == (300, 200)  # small images are left as they are


@pytest.mark.parametrize("mode", ["I", "F", "P", "1", "LA", "RGBA", "CMYK"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    image = Image.new(mode, (1500, 1100))
    buf = io.BytesIO()
    image.save(buf, "TIFF")
    buf.seek(0)
    out = decode_query_image(buf, 16_000_000)
    assert out.mode == "RGB" and min(out.size) >= DECODE_SIDE


def test_non_images_are_bad_queries() -> None:
    with pytest.raises(BadQuery):
        decode_query_image(io.BytesIO(b"not an image at all" * 50), 16_000_000)


_PEAK = """
import io, json, resource, sys
sys.path.insert(0, sys.argv[1])
from app.errors import BadQuery
from app.query_image import decode_query_image
data = open(sys.argv[2], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_query_image(io.BytesIO(data), 16_000_000)
    outcome = "decoded"
except BadQuery:
    outcome = "refused"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "peak_mb": (after - before) / 1024}))
"""


def _decode_peak_mb(tmp_path: Path, data: bytes) -> tuple[str, float]:
    """Decode ``data`` in a fresh process; (outcome, peak RSS growth in MB over the process before it)."""
    path = tmp_path / "query.bin"
    path.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(REPO), str(path)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["outcome"], float(result["peak_mb"])


def test_peak_memory_of_a_worst_case_query_is_bounded(tmp_path: Path) -> None:
    """A 16 MP 16-bit PNG (the largest the cap lets through, 2 bytes a pixel decoded) costs at most
    ~2x its decoded size (the old decode path: ~170 MB here); the 59 MP one costs nothing to refuse."""
    outcome, peak = _decode_peak_mb(tmp_path, gray16_png(4000, 4000))
    assert outcome == "decoded" and peak < 120, peak
    outcome, peak = _decode_peak_mb(tmp_path, gray16_png(7700, 7700, gradient=False))
    assert outcome == "refused" and peak < 10, peak


# --- the body cap --------------------------------------------------------------------------------


def test_a_body_over_the_query_cap_is_413_before_it_is_read(client: TestClient) -> None:
    home = client.app.state.services.settings.data_home  # type: ignore[attr-defined]
    before = _files(home)
    big = b"\xff\xd8" + os.urandom(5 * 1024**2)  # over the 4 MiB query cap, under the 50 MiB upload cap
    body = _error(client.post(URL, files={"file": ("q.jpg", big)}), 413, "payload_too_large")
    assert "query image" in body["message"]

    def stream() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n\r\n'
        for _ in range(2000):
            yield b"\0" * 4096

    resp = client.post(URL, content=stream(), headers={"content-type": "multipart/form-data; boundary=b"})
    _error(resp, 413, "payload_too_large")
    assert _files(home) == before


# --- slots and the rate limit --------------------------------------------------------------------


class _SlowEncoder(HashEncoder):
    """Blocks each image encode until ``release`` is set (a query holding its slot)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(30)
        return super().encode_images(images, batch_size)


def test_when_every_slot_is_busy_the_answer_is_503_with_retry_after(tmp_path: Path) -> None:
    encoder = _SlowEncoder()
    settings = make_settings(tmp_path / "home", model="stub", query_image_slots=1, query_image_wait_s=0.2)
    with TestClient(create_app(settings, encoder_loader=lambda s, d: encoder)) as c:
        first: list[int] = []
        holder = threading.Thread(
            target=lambda: first.append(c.post(URL, files={"file": ("a.jpg", jpeg_bytes())}).status_code)
        )
        holder.start()
        try:
            assert encoder.entered.wait(30)
            busy = c.post(URL, files={"file": ("b.jpg", jpeg_bytes())})
            _error(busy, 503, "unavailable")
            assert int(busy.headers["retry-after"]) >= 1
        finally:
            encoder.release.set()
            holder.join(30)
        assert first == [200]
        assert c.post(URL, files={"file": ("c.jpg", jpeg_bytes())}).status_code == 200  # the slot is free again


def test_the_per_client_rate_limit_answers_429(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", model="stub", query_image_rate_per_minute=2)
    with TestClient(create_app(settings, encoder_loader=lambda s, d: HashEncoder())) as c:
        for _ in range(2):
            assert c.post(URL, files={"file": ("a.jpg", jpeg_bytes())}).status_code == 200
        limited = c.post(URL, files={"file": ("a.jpg", jpeg_bytes())})
        _error(limited, 429, "too_many_requests")
        assert 1 <= int(limited.headers["retry-after"]) <= 30
        assert c.get("/api/search", params={"q": "text queries are not limited"}).status_code == 200
    off = make_settings(tmp_path / "home2", model="stub")  # off by default
    with TestClient(create_app(off, encoder_loader=lambda s, d: HashEncoder())) as c:
        assert all(c.post(URL, files={"file": ("a.jpg", jpeg_bytes())}).status_code == 200 for _ in range(5))


def test_rate_limiter_refills_and_keeps_clients_apart() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0], max_clients=2)
    assert all(limiter.acquire("a") == 0 for _ in range(60))
    assert limiter.acquire("a") == pytest.approx(1.0)  # one token a second
    assert limiter.acquire("b") == 0  # another client has its own bucket
    now[0] += 1.0
    assert limiter.acquire("a") == 0
    limiter.acquire("c")  # over max_clients: idle or oldest buckets are dropped
    assert len(limiter._buckets) <= 2
