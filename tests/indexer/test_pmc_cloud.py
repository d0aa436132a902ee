"""``biomedsearch fetch`` against a real S3 API (moto's server on 127.0.0.1) holding a small PMC
Cloud Service bucket in the real layout (:mod:`pmc_bucket`): fetch by id and by version, the md5
refusal, ``--since`` through two inventories, the license filter, ``--limit``, the retraction
(gone from the catalogue, the indexes and search), resume after SIGKILL, and PMCIDs through the API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pmc_bucket import ARTICLES, DAY1, DAY2, Bucket, serve_bucket
from sqlalchemy import func, select
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from indexer.catalogue import Article, Figure, PmcObject, make_engine, make_session_factory, migrate
from indexer.pmc_client import HttpOptions
from indexer.pmc_cloud import PmcCloud

REPO = Path(__file__).resolve().parents[2]
FAST = HttpOptions(requests_per_second=200, retries=1, backoff_s=0.01)


@pytest.fixture
def bucket(shared_data: Path) -> Iterator[Bucket]:
    with serve_bucket(shared_data / "jats") as b:
        b.day1()
        yield b


@pytest.fixture
def env(bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "BIOMEDSEARCH_DATA_HOME": str(tmp_path / "home"),
        "BIOMEDSEARCH_PMC_CLOUD_URL": bucket.base_url,
        "BIOMEDSEARCH_PMC_REQUESTS_PER_SECOND": "10",
        "BIOMEDSEARCH_PMC_RETRIES": "1",
        "BIOMEDSEARCH_DATABASE_URL": "",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    return values


def fetch(*args: str) -> Any:
    return CliRunner().invoke(cli, ["fetch", *args, "--no-progress"], catch_exceptions=False)


def summary(result: Any) -> str:
    return next(line for line in result.output.splitlines() if line.startswith("fetch:"))


def catalogue(env: dict[str, str]) -> Any:
    url = f"sqlite:///{Path(env['BIOMEDSEARCH_DATA_HOME']) / 'catalogue.db'}"
    migrate(url)
    return make_session_factory(make_engine(url))


def pmcids(factory: Any) -> list[str]:
    with factory() as s:
        return sorted(s.scalars(select(Article.pmcid)).all())


def test_the_s3_url_shapes_moto_answers(bucket: Bucket, tmp_path: Path) -> None:
    """ListObjectsV2 (versions, inventory dates), a metadata GET with its ETag, the manifest and
    its gzipped CSV: read anonymously through the client."""
    with PmcCloud(bucket.base_url, FAST) as cloud:
        assert cloud.bucket == "pmc-oa-opendata"
        assert cloud.versions("PMC1000002") == [1, 2]
        assert cloud.versions("PMC100000") == [], "PMC100000. must not match PMC1000002.*"
        assert cloud.resolve("PMC1000002") == ("PMC1000002", 2)
        meta, etag = cloud.metadata("PMC1000004", 1)
        assert meta.license_code == "CC0" and not meta.is_retracted and len(etag) == 32
        assert meta.xml.key == "PMC1000004.1/PMC1000004.1.xml" and meta.xml.md5
        assert cloud.inventories() == [DAY1]
        inventory = cloud.inventory("latest")
        rows = list(cloud.inventory_rows(inventory, tmp_path))
        assert {r.key for r in rows} == {f"metadata/{a.pmcid}.{a.version}.json" for a in ARTICLES}
        assert dict((r.key, r.etag) for r in rows)["metadata/PMC1000004.1.json"] == etag


def test_fetch_by_id_takes_the_latest_version_and_by_version_that_one(env: dict[str, str]) -> None:
    downloads = Path(env["BIOMEDSEARCH_DATA_HOME"]) / "downloads"
    result = fetch("PMC1000002", "PMC1000001.1")
    assert result.exit_code == 0, result.output
    assert summary(result).startswith("fetch: 2 article version(s) fetched")
    assert sorted(p.name for p in downloads.iterdir()) == ["PMC1000001.1", "PMC1000002.2"]
    folder = downloads / "PMC1000001.1"
    # the XML, the two images its <graphic>/<inline-graphic> hrefs name (no extension in the href),
    # the metadata; neither the supplement nor the .txt
    assert sorted(p.name for p in folder.iterdir()) == [
        "PMC1000001.1.json", "PMC1000001.1.xml", "elife-19405-fig1.jpg", "elife-19405-inf1.jpg"
    ]
    result = fetch("PMC1000002.1")
    assert result.exit_code == 0, result.output
    assert (downloads / "PMC1000002.1" / "PMC1000002.1.xml").is_file()
    factory = catalogue(env)
    assert pmcids(factory) == ["PMC1000001", "PMC1000002"], "one article per PMCID, whatever the version"
    with factory() as s:
        figs = s.scalars(select(Figure).join(Article).where(Article.pmcid == "PMC1000001")).all()
        assert figs and all(f.image_path for f in figs)
        seen = {r.key: r.status for r in s.scalars(select(PmcObject))}
    assert seen == {f"metadata/{k}.json": "ingested" for k in ("PMC1000001.1", "PMC1000002.2", "PMC1000002.1")}


def test_bad_input_is_refused_with_a_message(env: dict[str, str]) -> None:
    assert fetch("PMC1/../x").exit_code != 0
    result = fetch("PMC424242")
    assert result.exit_code == 1 and "no version" in result.output
    assert fetch().exit_code != 0
    assert fetch("PMC1", "--since", "2026-01-01").exit_code != 0
    assert "not a date" in fetch("--since", "yesterday").output


def test_an_md5_mismatch_stores_nothing_of_the_article(env: dict[str, str]) -> None:
    home = Path(env["BIOMEDSEARCH_DATA_HOME"])
    result = fetch("PMC1000006", "PMC1000004")
    assert result.exit_code == 1
    assert "md5" in result.output and "PMC1000006.1" in result.output
    assert "1 refused (md5 mismatch)" in summary(result)
    assert sorted(p.name for p in (home / "downloads").iterdir()) == ["PMC1000004.1"]
    assert pmcids(catalogue(env)) == ["PMC1000004"]


def test_since_reads_the_newest_inventory_and_a_second_run_fetches_nothing(
    env: dict[str, str], bucket: Bucket
) -> None:
    first = fetch("--since", "2026-11-01")
    assert first.exit_code == 1  # PMC1000006 is refused (bad md5)
    line = summary(first)
    assert line.startswith("fetch: 4 article version(s) fetched") and f"inventory {DAY1}" in line
    assert "1 retracted (0 withdrawn)" in line and "1 refused" in line and "1 superseded" in line
    factory = catalogue(env)
    # PMC1000008 changed before the date; PMC1000005 is retracted; PMC1000006 refused
    assert pmcids(factory) == ["PMC1000001", "PMC1000002", "PMC1000003", "PMC1000004"]
    bucket.day2()
    second = fetch("--since", "2026-11-01")
    assert second.exit_code == 0, second.output
    line = summary(second)
    assert line.startswith("fetch: 2 article version(s) fetched") and f"inventory {DAY2}" in line
    assert "1 retracted (1 withdrawn)" in line and "reused" in line
    assert pmcids(factory) == ["PMC1000002", "PMC1000003", "PMC1000004", "PMC1000007"]
    third = fetch("--since", "2026-11-01")
    assert third.exit_code == 0, third.output
    assert summary(third).startswith("fetch: 0 article version(s) fetched (0 files downloaded, 0 reused)")
    assert "0 failed" in summary(third)
    # the older inventory is still there and can be named
    assert f"inventory {DAY1}" in summary(fetch("--inventory", "2026-11-29"))


def test_license_filter_and_limit(env: dict[str, str]) -> None:
    result = fetch("--since", "2026-11-01", "--license", "CC BY", "--license", "CC0", "--limit", "2")
    line = summary(result)
    assert "fetch: 2 article version(s) fetched" in line and "4 left by --limit" in line
    result = fetch("--since", "2026-11-01", "--license", "CC BY", "--license", "CC0")
    assert "1 filtered by license" in summary(result) and "3 unchanged since last seen" in summary(result)
    factory = catalogue(env)
    assert "PMC1000003" not in pmcids(factory), "CC BY-NC-ND is filtered out"
    assert pmcids(factory) == ["PMC1000001", "PMC1000002", "PMC1000004"]
    # without the filter, the filtered version is fetched now (a filter is not a settled outcome)
    result = fetch("--since", "2026-11-01")
    assert "PMC1000003" in pmcids(factory), result.output


class HashEncoder:
    """Deterministic stand-in encoder (the subject here is withdrawal, not ranking)."""

    model_id = "hash-encoder-pmc"
    dim = 16
    device = "cpu"

    def _vec(self, data: bytes) -> np.ndarray:
        import hashlib

        v = np.random.default_rng(int.from_bytes(hashlib.sha256(data).digest()[:8], "little")).standard_normal(16)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def encode_texts(self, texts: Any, batch_size: int = 256) -> np.ndarray:
        return np.stack([self._vec(t.encode()) for t in texts])

    def encode_images(self, images: Any, batch_size: int = 64) -> np.ndarray:
        return np.stack([self._vec(im.tobytes()) for im in images])


def test_a_retracted_article_is_withdrawn_from_catalogue_indexes_and_search(
    env: dict[str, str], bucket: Bucket
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from indexer.embeddings import embed_pending
    from indexer.index_update import update_indexes
    from indexer.publish import IndexStore

    home = Path(env["BIOMEDSEARCH_DATA_HOME"])
    fetch("--since", "2026-11-01")
    settings = Settings(_env_file=None, data_home=home, model="hash", text_model=None, run_worker=False,  # type: ignore[call-arg]
                        use_gpu=False, device="cpu", index_poll_s=0.2)
    factory = catalogue(env)
    encoder = HashEncoder()
    embed_pending(factory, encoder, home, batch_size=16, progress=False)
    update_indexes(factory, settings.index_dir, encoder.model_id, options=settings.index_options(), progress=False)
    store = IndexStore(settings.index_dir, encoder.model_id)

    def image_index_ids() -> set[int]:
        index, _meta = store.load("image", store.read_pointer("image") or 0)
        return set(index.ids().tolist())

    with factory() as s:
        retracted = set(s.scalars(select(Figure.id).join(Article).where(
            Article.pmcid == "PMC1000001", Figure.image_path.is_not(None))).all())
    before = image_index_ids()
    assert retracted and retracted <= before

    def search() -> tuple[set[str], set[str]]:
        with TestClient(create_app(settings, encoder_loader=lambda spec, dev: encoder)) as c:
            lexical = c.get("/api/search", params={"q": "invagination membrane", "mode": "lexical"}).json()
            dense = c.get("/api/search", params={"q": "x", "mode": "dense", "k": 100}).json()
        return ({h["article"]["pmcid"] for h in lexical["results"]}, {h["article"]["pmcid"] for h in dense["results"]})

    lexical, dense = search()
    assert lexical == {"PMC1000001"} and "PMC1000001" in dense
    bucket.day2()
    result = fetch("--since", "2026-11-01")
    assert "withdrew 1 retracted article(s)" in result.output
    assert "republished the indexes of 1 model(s)" in result.output
    assert image_index_ids() == before - retracted, "the published image index no longer holds them"
    with factory() as s:
        assert s.scalar(select(func.count(Article.id)).where(Article.pmcid == "PMC1000001")) == 0
    lexical, dense = search()
    assert lexical == set() and "PMC1000001" not in dense and dense


def test_a_killed_fetch_resumes_without_duplicates(env: dict[str, str], tmp_path: Path) -> None:
    home = Path(env["BIOMEDSEARCH_DATA_HOME"])
    child_env = {**os.environ, **env, "BIOMEDSEARCH_PMC_REQUESTS_PER_SECOND": "6", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "app.cli", "fetch", "--since", "2026-11-01", "--no-progress"]
    proc = subprocess.Popen(cmd, env=child_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    downloads = home / "downloads"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in downloads.iterdir() if p.name.startswith("PMC")] if downloads.is_dir() else []
        if len(done) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the fetch ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.stdout is not None
    proc.stdout.close()
    rerun = subprocess.run(cmd, env=child_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    line = next(x for x in rerun.stdout.splitlines() if x.startswith("fetch:"))
    assert "fetch: 4 article version(s) fetched" in line, rerun.stdout + rerun.stderr
    reused = int(line.split(" reused")[0].rsplit("(", 1)[1].split(", ")[-1])
    assert reused >= 2, f"files of the killed run are reused: {line}"
    factory = catalogue(env)
    with factory() as s:
        keys = s.scalars(select(Article.key)).all()
        statuses = {key: status for key, status in s.execute(select(PmcObject.key, PmcObject.status))}
    assert len(keys) == len(set(keys)) == 4
    assert statuses["metadata/PMC1000004.1.json"] == "ingested"
    assert not (downloads / ".partial").exists()
    assert not list(downloads.rglob("*.part"))
    again = subprocess.run(cmd, env=child_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "fetch: 0 article version(s) fetched" in again.stdout


def test_pmcids_given_to_the_api_are_fetched_from_the_cloud(env: dict[str, str], bucket: Bucket) -> None:
    from fastapi.testclient import TestClient

    from app.jobs import Worker
    from app.main import create_app

    home = Path(env["BIOMEDSEARCH_DATA_HOME"])
    settings = Settings(_env_file=None, data_home=home, model="hash", text_model=None, run_worker=False,  # type: ignore[call-arg]
                        use_gpu=False, device="cpu", api_key="k" * 20, pmc_cloud_url=bucket.base_url,
                        pmc_requests_per_second=10)
    encoder = HashEncoder()
    with TestClient(create_app(settings, encoder_loader=lambda spec, dev: encoder)) as c:
        resp = c.post("/api/articles", json={"pmcids": ["PMC1000004", "PMC1000002.1", "PMC1000005"]},
                      headers={"X-API-Key": "k" * 20})
        assert resp.status_code == 202, resp.text
        engine = make_engine(settings.resolved_database_url)
        worker = Worker(settings, make_session_factory(engine), lambda: encoder)
        assert worker.run_once() is not None
        engine.dispose()
        job = c.get(resp.json()["status_url"]).json()
    assert job["state"] == "done", job
    assert job["counts"]["fetched"] == 2
    assert any("PMC1000005" in str(e) and "retracted" in str(e) for e in job["errors"]), job["errors"]
    assert pmcids(catalogue(env)) == ["PMC1000002", "PMC1000004"]
    assert (home / "downloads" / "PMC1000002.1").is_dir()


def test_a_redirect_to_another_host_is_refused(
    env: dict[str, str], bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server on 127.0.0.1 that answers every request with a 307 to the real bucket under another
    host name (``localhost``): the fetch refuses to follow and stores nothing."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    target = bucket.endpoint.replace("127.0.0.1", "localhost")
    asked: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(307)
            self.send_header("Location", target + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("BIOMEDSEARCH_PMC_CLOUD_URL", f"http://127.0.0.1:{httpd.server_address[1]}/pmc-oa-opendata")
        result = fetch("PMC1000001.1")
        by_inventory = fetch("--since", "2026-11-01")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.exit_code == 1 and "redirects to another host" in result.output
    assert by_inventory.exit_code != 0 and "redirects to another host" in by_inventory.output
    assert asked, "the redirecting server was asked"
    home = Path(env["BIOMEDSEARCH_DATA_HOME"])
    assert not (home / "downloads").exists() or not any((home / "downloads").iterdir())
    assert pmcids(catalogue(env)) == []
