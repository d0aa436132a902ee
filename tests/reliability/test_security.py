"""Security properties of the service, each checked against the running app:

- API keys are compared in constant time (``hmac.compare_digest`` on every key check);
- no endpoint fetches a URL a user supplies (a PMCID field holding a URL is refused; only the PMC
  client talks HTTP, and only to the configured base URL);
- nothing is written outside the data home during uploads, jobs and searches (temporary files
  included: a private temp dir is watched);
- error bodies carry no stack trace or exception text, even for an unexpected internal error;
- CORS is closed by default (no ``Access-Control-Allow-Origin`` for a foreign origin, no preflight);
- security headers (CSP with ``frame-ancestors 'none'``, nosniff, referrer policy, frame denial)
  on every UI page, static file and API answer.
"""

from __future__ import annotations

import ast
import hmac
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from reliability_fixtures import (
    API_KEY,
    FakeEncoder,
    article_package,
    article_zip,
    jpeg,
    make_settings,
    package_members,
    tar_gz,
)

from app.config import Settings
from app.jobs import Worker
from app.main import create_app
from indexer.catalogue import make_engine, make_session_factory

REPO = Path(__file__).resolve().parents[2]
H = {"X-API-Key": API_KEY}


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home")


@pytest.fixture
def client(home: Settings) -> Iterator[TestClient]:
    app = create_app(home, encoder_loader=lambda s, d: FakeEncoder())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


# --- API keys ------------------------------------------------------------------------------------------


def test_every_key_check_goes_through_compare_digest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    settings = make_settings(tmp_path / "home", read_api_key="reader-key")
    with TestClient(create_app(settings, encoder_loader=lambda s, d: FakeEncoder())) as c:
        assert c.post("/api/articles", json={"pmcids": ["PMC1"]}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert (b"wrong", API_KEY.encode()) in calls
        calls.clear()
        assert c.get("/api/search", params={"q": "x"}, headers={"X-API-Key": "nope"}).status_code == 401
        assert {(b"nope", b"reader-key"), (b"nope", API_KEY.encode())} <= set(calls)
        calls.clear()
        ok = c.get("/api/search", params={"q": "x"}, headers={"X-API-Key": "reader-key"})
        assert ok.status_code == 200 and calls, "a right key is also checked by compare_digest"
        # odd header values: a 401, never a 500
        for value in ("ключ".encode(), b"a" * 10_000, b"\xff\xfe", (API_KEY + "x").encode()):
            resp = c.post("/api/articles", json={"pmcids": ["PMC1"]}, headers={"X-API-Key": value})
            assert resp.status_code == 401, (value[:20], resp.text)
        assert c.post("/api/articles", json={"pmcids": ["PMC1"]}, headers=H).status_code == 202


def test_no_key_comparison_outside_compare_digest() -> None:
    """No ``==`` / ``!=`` / ``in`` compares a secret's value anywhere in the app (a timing leak)."""
    offenders = []
    for path in (REPO / "app").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops
            ):
                text = ast.unparse(node)
                if "get_secret_value" in text or "api_key ==" in text or "== api_key" in text:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {text}")
    assert offenders == []


# --- no user-supplied URL is fetched ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "https://evil.example/PMC1.tar.gz",
        "http://127.0.0.1:5432/",
        "file:///etc/passwd",
        "ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/x.tar.gz",
        "//evil.example/PMC1",
        "PMC1@evil.example",
        "PMC1/../../admin",
        "PMC1?url=http://evil.example",
        "PMC1 http://evil.example",
        "gopher://127.0.0.1:6379/_FLUSHALL",
    ],
)
def test_a_pmcid_field_holding_a_url_is_refused(client: TestClient, value: str) -> None:
    resp = client.post("/api/articles", json={"pmcids": ["PMC3166277", value]}, headers=H)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "validation_error"
    assert client.get("/api/jobs").json()["total"] == 0, "nothing may be queued"


def test_only_the_pmc_client_talks_http_and_only_to_the_configured_base() -> None:
    """Structure: the one module importing an HTTP client is ``indexer/pmc_client.py``, and the app
    hands it URLs from the Settings only (``pmc_cloud_url``)."""
    clients = {"httpx", "requests", "urllib.request", "urllib3", "aiohttp", "http.client", "pycurl"}
    importers = set()
    for package in ("app", "indexer", "training"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n in clients or n.split(".")[0] in clients - {"urllib", "http"} for n in names):
                    importers.add(str(path.relative_to(REPO)))
    assert importers == {"indexer/pmc_client.py"}
    calls = []
    for path in (REPO / "app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.keyword) and node.arg == "base_url":
                calls.append(ast.unparse(node.value))
    assert calls and all(c.endswith("pmc_cloud_url") for c in calls), calls


# --- nothing written outside the data home --------------------------------------------------------------


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_nothing_is_written_outside_the_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads (tar and zip, one over the multipart spooling threshold), a job, searches, figure
    downloads: afterwards only the data home has changed, and the temp dir is as it was."""
    root = tmp_path / "root"
    (root / "tmp").mkdir(parents=True)
    (root / "neighbour").mkdir()
    (root / "neighbour" / "keep.txt").write_text("untouched")
    monkeypatch.setattr(tempfile, "tempdir", str(root / "tmp"))
    monkeypatch.chdir(root / "neighbour")
    settings = make_settings(root / "home")
    before = _files(root)
    # over Starlette's 1 MB in-memory threshold: the multipart parser spools it to a temp file
    big = tar_gz([*package_members(92, 2), ("PMC92/pad.bin", bytes(1_200_000))])
    with TestClient(create_app(settings, encoder_loader=lambda s, d: FakeEncoder())) as c:
        for name, data in (("a.tar.gz", article_package(90, 2)), ("b.zip", article_zip(93, 2)), ("c.tar.gz", big)):
            assert c.post("/api/articles", files={"file": (name, data)}, headers=H).status_code == 202
        engine = make_engine(settings.resolved_database_url)
        worker = Worker(settings, make_session_factory(engine), lambda: FakeEncoder())
        while worker.run_once() is not None:
            pass
        engine.dispose()
        assert {j["state"] for j in c.get("/api/jobs").json()["jobs"]} == {"done"}
        # a separate worker published: the service switches on its next index poll (0.2 s here)
        deadline = time.monotonic() + 30
        while c.get("/readyz").json()["indexes"]["image"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        hits = c.get("/api/search", params={"q": "chest CT", "k": 20}).json()["results"]
        assert hits
        c.get(hits[0]["image_url"])
        c.get(hits[0]["thumbnail_url"])
        c.post("/api/search/image", files={"file": ("q.jpg", jpeg(9200))}, data={"mode": "image"})
        c.get("/metrics")
        c.get("/")
    after = _files(root)
    outside = {p for p in after - before if not p.startswith("home")}
    assert outside == set(), f"written outside the data home: {sorted(outside)}"
    assert (root / "neighbour" / "keep.txt").read_text() == "untouched"
    assert not (settings.data_home / ".tmp").exists(), "the unpack dir is removed when empty"


# --- error bodies ---------------------------------------------------------------------------------------


def test_internal_errors_carry_no_stack_trace(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.search import SearchService

    secret = "SECRET-DETAIL /srv/private/config.py line 42"

    def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(secret)

    monkeypatch.setattr(SearchService, "search_text", boom)
    app = create_app(home, encoder_loader=lambda s, d: FakeEncoder())

    @app.get("/test-boom")
    def test_boom() -> None:
        raise KeyError(secret)

    with TestClient(app, raise_server_exceptions=False) as c:
        for resp in (c.get("/api/search", params={"q": "x"}), c.get("/test-boom")):
            assert resp.status_code == 500
            assert resp.headers["content-type"].startswith("application/json")
            assert resp.json() == {
                "error": {"status": 500, "code": "internal_error", "message": "internal error; see the service log"}
            }
            for leak in ("SECRET", "Traceback", "RuntimeError", "KeyError", 'File "', "/srv/"):
                assert leak not in resp.text
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert "default-src 'none'" in resp.headers["content-security-policy"]
        # client errors do not echo exception internals either
        resp = c.get("/api/figures/not-a-number")
        assert resp.status_code == 422 and "Traceback" not in resp.text and "input" not in resp.json()["error"]


# --- CORS and headers ----------------------------------------------------------------------------------


def test_cors_is_closed_by_default(client: TestClient) -> None:
    evil = {"Origin": "https://evil.example"}
    for resp in (
        client.get("/api/search", params={"q": "x"}, headers=evil),
        client.get("/", headers=evil),
        client.post("/api/articles", json={"pmcids": ["PMC1"]}, headers={**evil, **H}),
        client.options(
            "/api/articles",
            headers={**evil, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "X-API-Key"},
        ),
    ):
        assert not any(h.startswith("access-control-") for h in resp.headers), dict(resp.headers)


def _assert_security_headers(resp: Any, what: str) -> None:
    h = resp.headers
    assert h.get("x-content-type-options") == "nosniff", what
    assert h.get("x-frame-options") == "DENY", what
    assert h.get("referrer-policy") == "no-referrer", what
    csp = h.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, (what, csp)
    assert "default-src 'none'" in csp, (what, csp)
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, (what, csp)


def test_security_headers_on_ui_pages_static_files_and_api(client: TestClient) -> None:
    for path in ("/", "/add", "/figures/1", "/articles/1", "/figures/abc", "/no-such-page"):
        resp = client.get(path)
        assert resp.status_code in (200, 404, 422), (path, resp.status_code)
        _assert_security_headers(resp, path)
    for path in ("/", "/add"):
        assert client.get(path).headers["content-type"].startswith("text/html")
    static = client.get("/static/site.css")
    assert static.status_code == 200
    assert static.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/../../app/config.py").status_code == 404
    assert client.get("/static/%2e%2e/%2e%2e/app/config.py").status_code == 404
    for resp in (client.get("/api/search", params={"q": "x"}), client.get("/api/figures/0"), client.get("/healthz")):
        assert resp.headers["x-content-type-options"] == "nosniff"
    _assert_security_headers(client.get("/api/search", params={"q": "x"}), "/api/search")
    docs = client.get("/docs")  # Swagger UI (CDN script, inline bootstrap): framing is still refused
    assert docs.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert docs.headers["x-frame-options"] == "DENY"
