"""The UI's page routes without a browser: pages for existing figures and articles, the 404 page for
missing or impossible ids, and the pages' security headers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[TestClient]:
    from service_fixtures import build_home

    home = tmp_path_factory.mktemp("pages") / "home"
    settings = Settings(_env_file=None, data_home=home, model=None, run_worker=False)  # type: ignore[call-arg]
    build_home(settings, [shared_data / "jats" / "packages" / "pone.0056489.tar.gz"], None)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize(("kind", "noun"), [("figures", "Figure"), ("articles", "Article")])
def test_existing_missing_and_impossible_ids(client: TestClient, kind: str, noun: str) -> None:
    ok = client.get(f"/{kind}/1")
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/html")
    assert f"<title>{noun} 1 · BiomedSearch" in ok.text
    missing = client.get(f"/{kind}/99999")
    assert missing.status_code == 404 and f"{noun} 99999" in missing.text
    impossible = client.get(f"/{kind}/0")
    assert impossible.status_code == 404 and f"That {noun.lower()}" in impossible.text
    assert client.get(f"/{kind}/not-a-number").status_code in (404, 422)


def test_pages_carry_security_headers(client: TestClient) -> None:
    for path in ("/", "/add", "/figures/1", "/articles/1", "/figures/99999"):
        resp = client.get(path)
        csp = resp.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        assert resp.headers["x-content-type-options"] == "nosniff", path
