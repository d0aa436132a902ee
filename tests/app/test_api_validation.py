"""Bounds and bad input: every violation is a 4xx with a JSON error body, never a 500.

The encoder here is a deterministic test double (the model is irrelevant to request validation);
the catalogue and the (empty) indexes are real.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_fixtures import API_KEY, HashEncoder, jpeg_bytes, make_settings, png_bomb_bytes
from fastapi.testclient import TestClient

from app.main import create_app


@pytest.fixture(scope="module")
def encoder() -> HashEncoder:
    return HashEncoder()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("validation") / "home"


@pytest.fixture(scope="module")
def client(home: Path, encoder: HashEncoder) -> Iterator[TestClient]:
    settings = make_settings(home, model="stub", max_upload_bytes=64 * 1024, max_query_chars=50)
    app = create_app(settings, encoder_loader=lambda spec, device: encoder)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()["error"]
    assert body["status"] == status and body["message"]
    assert "Traceback" not in resp.text
    if code:
        assert body["code"] == code
    return body


def test_empty_index_answers_empty_results_and_readyz_says_why(client: TestClient) -> None:
    resp = client.get("/api/search", params={"q": "chest CT"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["results"] == [] and body["indexed"] == 0 and body["mode"] == "hybrid"
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    assert any("no vectors indexed" in r for r in ready.json()["reasons"])
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"q": "x", "k": 0}, "k"),
        ({"q": "x", "k": 101}, "k"),
        ({"q": "x", "k": "ten"}, "k"),
        ({"q": "x", "offset": -1}, "offset"),
        ({"q": "x", "offset": 950, "k": 51}, "offset + k"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "non-space"),
        ({"q": "a" * 51}, "longer than 50"),
        ({}, "q"),
        ({"q": "x", "year_from": 2020, "year_to": 2010}, "year_from"),
        ({"q": "x", "year_from": 99999}, "year_from"),
        ({"q": "x", "mode": "bogus"}, "mode"),
    ],
)
def test_search_bounds(client: TestClient, params: dict, fragment: str) -> None:
    body = assert_error(client.get("/api/search", params=params), 422, "validation_error")
    assert fragment in body["message"] or any(fragment in ".".join(d["loc"]) for d in body.get("details") or [])


def test_query_embeddings_are_cached(client: TestClient, encoder: HashEncoder) -> None:
    start = encoder.text_calls
    hits_before = _metric(client, 'biomedsearch_query_cache_total{result="hit"}')
    for _ in range(3):
        assert client.get("/api/search", params={"q": "MRI of the knee", "mode": "dense"}).status_code == 200
    assert encoder.text_calls == start + 1
    client.get("/api/search", params={"q": "another query", "mode": "dense"})
    assert encoder.text_calls == start + 2
    assert _metric(client, 'biomedsearch_query_cache_total{result="hit"}') == hits_before + 2


def _metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_unknown_ids_and_routes_are_json_404(client: TestClient) -> None:
    for path in (
        "/api/figures/12345",
        "/api/figures/12345/image",
        "/api/figures/12345/thumbnail",
        "/api/figures/12345/similar",
        "/api/articles/777",
        "/api/jobs/999",
        "/nope",
    ):
        assert_error(client.get(path), 404, "not_found")
    assert_error(client.get("/api/figures/abc"), 422)
    assert_error(client.get("/api/figures/0"), 422)
    assert_error(client.get(f"/api/figures/{2**40}"), 422)
    assert_error(client.delete("/api/figures/1"), 405, "method_not_allowed")
    assert_error(client.get("/api/jobs", params={"state": "sleeping"}), 422)
    assert_error(client.get("/api/jobs", params={"limit": 1000}), 422)


def test_image_query_rejects_non_images_bombs_and_empty_files(client: TestClient) -> None:
    url = "/api/search/image"
    body = assert_error(client.post(url, files={"file": ("x.jpg", b"I am not a figure\n")}), 422, "bad_image")
    assert "not an image" in body["message"]
    body = assert_error(client.post(url, files={"file": ("bomb.png", png_bomb_bytes(20000, 20000))}), 422)
    assert "decompression bomb" in body["message"]
    assert_error(client.post(url, files={"file": ("e.jpg", b"")}), 422)
    assert_error(client.post(url, data={"k": "5"}), 422)  # no file part
    assert_error(client.post(url, files={"file": ("a.jpg", jpeg_bytes())}, data={"k": "0"}), 422)
    assert_error(client.post(url, files={"file": ("a.jpg", jpeg_bytes())}, data={"mode": "audio"}), 422)
    ok = client.post(url, files={"file": ("a.jpg", jpeg_bytes())}, data={"k": "3", "mode": "image"})
    assert ok.status_code == 200 and ok.json()["results"] == [] and ok.json()["mode"] == "image"


def test_upload_limit_from_content_length_and_while_streaming(client: TestClient, home: Path) -> None:
    stored_before = set((home / "uploads").glob("*/*"))
    big = b"\x1f\x8b" + b"\0" * (70 * 1024)
    headers = {"X-API-Key": API_KEY}
    resp = client.post("/api/articles", files={"file": ("big.tar.gz", big)}, headers=headers)
    assert_error(resp, 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer, counted while streaming
        for _ in range(40):
            yield b"\0" * 4096

    resp = client.post(
        "/api/search/image", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert_error(resp, 413)
    assert set((home / "uploads").glob("*/*")) == stored_before, "nothing may be stored from a refused upload"


def test_write_endpoint_needs_the_key(client: TestClient) -> None:
    payload = {"pmcids": ["PMC3166277"]}
    assert_error(client.post("/api/articles", json=payload), 401, "unauthorized")
    assert_error(client.post("/api/articles", json=payload, headers={"X-API-Key": "wrong"}), 401)
    assert client.get("/api/jobs", params={"state": "running"}).json() == {"jobs": [], "total": 0}


def test_write_endpoint_bad_bodies(client: TestClient) -> None:
    h = {"X-API-Key": API_KEY}
    assert_error(client.post("/api/articles", content=b"pmcids", headers={**h, "content-type": "text/plain"}), 415)
    assert_error(
        client.post("/api/articles", content=b"{not json", headers={**h, "content-type": "application/json"}), 400
    )
    assert_error(client.post("/api/articles", json={"pmcids": []}, headers=h), 422)
    assert_error(client.post("/api/articles", json={"pmcids": ["PMCX1"]}, headers=h), 422)
    assert_error(client.post("/api/articles", json={"pmcids": ["PMC1"] * 101}, headers=h), 422)
    assert_error(client.post("/api/articles", json={"ids": ["PMC1"]}, headers=h), 422)
    assert_error(client.post("/api/articles", json=["PMC1"], headers=h), 422)
    body = assert_error(client.post("/api/articles", files={"file": ("a.tar.gz", b"hello world")}, headers=h), 415)
    assert ".tar.gz" in body["message"]
    assert_error(client.post("/api/articles", files={"other": ("a.txt", b"x")}, headers=h), 422)


def test_valid_writes_queue_jobs(client: TestClient, home: Path) -> None:
    h = {"X-API-Key": API_KEY}
    total_before = client.get("/api/jobs").json()["total"]
    stored_before = set((home / "uploads").glob("*/*"))
    resp = client.post("/api/articles", json={"pmcids": ["pmc3166277", "3166277", "PMC2599765"]}, headers=h)
    assert resp.status_code == 202
    job_id = resp.json()["job_id"]
    assert resp.headers["location"] == f"/api/jobs/{job_id}"
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "queued" and job["kind"] == "fetch"
    assert "payload" not in job

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"<article/>"
        info = tarfile.TarInfo("x/x.nxml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    resp = client.post("/api/articles", files={"file": ("../../evil name.tar.gz", buf.getvalue())}, headers=h)
    assert resp.status_code == 202
    stored = list(set((home / "uploads").glob("*/*")) - stored_before)
    assert len(stored) == 1 and stored[0].name == "evil_name.tar.gz"
    assert gzip.decompress(stored[0].read_bytes())
    listing = client.get("/api/jobs").json()
    assert listing["total"] == total_before + 2 and [j["kind"] for j in listing["jobs"][:2]] == ["ingest", "fetch"]
    queued = client.get("/api/jobs", params={"state": "queued", "limit": 1}).json()
    assert queued["total"] == total_before + 2 and len(queued["jobs"]) == 1


def test_writes_disabled_without_a_configured_key(tmp_path: Path, encoder: HashEncoder) -> None:
    settings = make_settings(tmp_path / "home", model="stub", api_key=None)
    with TestClient(create_app(settings, encoder_loader=lambda s, d: encoder)) as c:
        body = assert_error(c.post("/api/articles", json={"pmcids": ["PMC1"]}, headers={"X-API-Key": "x"}), 403)
        assert "BIOMEDSEARCH_API_KEY" in body["message"]


def test_read_key_when_configured(tmp_path: Path, encoder: HashEncoder) -> None:
    settings = make_settings(tmp_path / "home", model="stub", read_api_key="reader")
    with TestClient(create_app(settings, encoder_loader=lambda s, d: encoder)) as c:
        assert_error(c.get("/api/search", params={"q": "x"}), 401)
        assert c.get("/api/search", params={"q": "x"}, headers={"X-API-Key": "reader"}).status_code == 200
        assert c.get("/api/search", params={"q": "x"}, headers={"X-API-Key": API_KEY}).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_security_headers_and_closed_cors(client: TestClient) -> None:
    resp = client.get("/api/search", params={"q": "x"}, headers={"Origin": "https://evil.example"})
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
    assert "default-src 'none'" in resp.headers["content-security-policy"]
    assert "access-control-allow-origin" not in resp.headers
    pre = client.options(
        "/api/search", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in pre.headers


def test_cors_opens_for_configured_origins(tmp_path: Path, encoder: HashEncoder) -> None:
    settings = make_settings(tmp_path / "home", model="stub", cors_origins=["https://ui.example"])
    with TestClient(create_app(settings, encoder_loader=lambda s, d: encoder)) as c:
        ok = c.get("/api/search", params={"q": "x"}, headers={"Origin": "https://ui.example"})
        assert ok.headers["access-control-allow-origin"] == "https://ui.example"
        other = c.get("/api/search", params={"q": "x"}, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_missing_encoder_is_reported_not_crashed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", model=None)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        body = assert_error(c.get("/api/search", params={"q": "x", "mode": "dense"}), 503, "unavailable")
        assert "no encoder configured" in body["message"]
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "no encoder configured" in ready.json()["reasons"][0]


def test_metrics_exposes_route_histograms(client: TestClient) -> None:
    name = 'biomedsearch_http_request_duration_seconds_count{method="GET",route="/api/search",status="200"}'
    before = _metric(client, name)
    client.get("/api/search", params={"q": "a new query for metrics"})
    client.get("/api/figures/5")
    assert _metric(client, name) == before + 1
    text = client.get("/metrics").text
    assert 'route="/api/figures/{figure_id}",status="404"' in text
    assert _metric(client, 'biomedsearch_encode_seconds_count{kind="text"}') >= 1
    assert 'biomedsearch_jobs{state="queued"}' in text
    assert 'biomedsearch_index_vectors{kind="image"} 0.0' in text
