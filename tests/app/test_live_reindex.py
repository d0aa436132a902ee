"""Searching continuously while an article is added through the API: zero failed requests, and the
new figures are found afterwards. A real uvicorn server, the in-process worker, the real encoder."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from app_fixtures import API_KEY, make_settings, running_server

from app.main import create_app

NEW_PACKAGE = "pone.0038869"  # 22 figures, 2 with images: new image and caption vectors


@pytest.fixture
def server(service_home: Path, tiny_model_dir: Path) -> Iterator[str]:
    settings = make_settings(
        service_home, model=f"local-dir:{tiny_model_dir}", run_worker=True, index_poll_s=0.2, worker_poll_s=0.1
    )
    with running_server(create_app(settings)) as url:
        yield url


@pytest.mark.slow
def test_search_keeps_answering_while_an_article_is_reindexed(server: str, shared_data: Path) -> None:
    failures: list[str] = []
    answered: list[tuple[int | None, int]] = []  # (image index version, results)
    stop = threading.Event()
    queries = ["western blot", "survival curve", "histology section", "schematic of the pathway"]

    def search_forever() -> None:
        with httpx.Client(base_url=server, timeout=30) as c:
            i = 0
            while not stop.is_set():
                try:
                    r = c.get("/api/search", params={"q": queries[i % len(queries)], "k": 10})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code}: {r.text[:200]}")
                    else:
                        body = r.json()
                        answered.append((body["index_version"], len(body["results"])))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                i += 1

    searchers = [threading.Thread(target=search_forever) for _ in range(2)]
    for t in searchers:
        t.start()
    with httpx.Client(base_url=server, timeout=60) as c:
        before = c.get("/readyz").json()["indexes"]
        package = shared_data / "jats" / "packages" / f"{NEW_PACKAGE}.tar.gz"
        resp = c.post(
            "/api/articles",
            files={"file": (package.name, package.read_bytes(), "application/gzip")},
            headers={"X-API-Key": API_KEY},
        )
        assert resp.status_code == 202, resp.text
        job_url = resp.json()["status_url"]
        seen_states: set[str] = set()
        deadline = time.monotonic() + 240
        while True:
            job = c.get(job_url).json()
            seen_states.add(job["state"])
            if job["state"] in ("done", "failed"):
                break
            assert time.monotonic() < deadline, f"job did not finish: {job}"
            time.sleep(0.2)
        assert job["state"] == "done", job["errors"]
        time.sleep(0.5)  # a few more searches on the new version
        stop.set()
        for t in searchers:
            t.join(30)

        assert failures == []
        assert len(answered) > 20
        versions = {v for v, _ in answered}
        assert len(versions) >= 2, f"searches should straddle the switch, saw versions {versions}"

        after = c.get("/readyz").json()["indexes"]
        assert after["caption"] == before["caption"] + 22
        assert after["image"] == before["image"] + 2
        article_id = job["counts"]["article_ids"][0]
        article = c.get(f"/api/articles/{article_id}").json()
        new_images = [f for f in article["figures"] if f["has_image"]]
        assert len(article["figures"]) == 22 and len(new_images) == 2
        everything = {r["id"] for r in c.get("/api/search", params={"q": "figure", "k": 100}).json()["results"]}
        for fig in new_images:
            assert fig["id"] in everything
            data = c.get(fig["image_url"]).content
            top = c.post("/api/search/image", files={"file": ("q.jpg", data)}, data={"mode": "image", "k": "1"})
            assert top.json()["results"][0]["id"] == fig["id"]
        captions = c.post(
            "/api/search/image", files={"file": ("q.jpg", data)}, data={"mode": "text", "k": "100"}
        ).json()
        assert {f["id"] for f in article["figures"]} <= {r["id"] for r in captions["results"]}
