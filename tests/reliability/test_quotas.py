"""Disk filling by a key holder (issue 17, finding 6): a cap on unfinished jobs, a free-space floor
that refuses new work with a clear answer (and stores nothing), zips not unpacked without room,
download retention and periodic sweeping of unreferenced uploads."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from reliability_fixtures import API_KEY, FakeEncoder, article_package, article_zip, make_settings

from app.config import Settings
from app.jobs import enqueue
from app.main import create_app
from app.quotas import Housekeeper, admit_work, free_bytes, prune_downloads
from indexer.catalogue import Job, make_engine, make_session_factory, migrate
from indexer.vocabulary import JobState

HEADERS = {"X-API-Key": API_KEY}


def _client(settings: Settings) -> TestClient:
    migrate(settings.resolved_database_url)
    return TestClient(create_app(settings, encoder_loader=lambda s, d: FakeEncoder()))


def _stored(settings: Settings) -> list[Path]:
    uploads = settings.data_home / "uploads"
    return sorted(p for p in uploads.rglob("*") if p.is_file()) if uploads.exists() else []


def test_a_full_queue_answers_503_with_retry_after_and_stores_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", max_queued_jobs=2)
    with _client(settings) as client:
        for pmcid in (2001, 2002):
            upload = {"file": (f"{pmcid}.tar.gz", article_package(pmcid))}
            ok = client.post("/api/articles", headers=HEADERS, files=upload)
            assert ok.status_code == 202, ok.text
        before = _stored(settings)
        full = client.post("/api/articles", headers=HEADERS, files={"file": ("x.tar.gz", article_package(2003))})
        assert full.status_code == 503, full.text
        assert full.headers["Retry-After"].isdigit()
        assert "BIOMEDSEARCH_MAX_QUEUED_JOBS=2" in full.json()["error"]["message"]
        fetch = client.post("/api/articles", headers=HEADERS, json={"pmcids": ["PMC2004"]})
        assert fetch.status_code == 503
        assert _stored(settings) == before
        jobs = client.get("/api/jobs").json()["jobs"]
        assert len(jobs) == 2


def test_under_the_free_space_floor_new_work_answers_507(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", min_free_bytes=10**18)
    with _client(settings) as client:
        up = client.post("/api/articles", headers=HEADERS, files={"file": ("x.tar.gz", article_package(2101))})
        assert up.status_code == 507, up.text
        body = up.json()["error"]
        assert "BIOMEDSEARCH_MIN_FREE_BYTES" in body["message"] and body["code"] == "insufficient_storage"
        fetch = client.post("/api/articles", headers=HEADERS, json={"pmcids": ["PMC2102"]})
        assert fetch.status_code == 507
        assert _stored(settings) == [] and client.get("/api/jobs").json()["jobs"] == []


def test_a_zip_is_not_unpacked_without_room_for_its_cap(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    free = free_bytes(home)
    # room for a small tarball, not for a zip that may unpack up to max_archive_bytes
    settings = make_settings(home, min_free_bytes=max(0, free - 400 * 1024**2), max_archive_bytes=1024**3)
    with _client(settings) as client:
        zipped = client.post("/api/articles", headers=HEADERS, files={"file": ("x.zip", article_zip(2201))})
        assert zipped.status_code == 507, zipped.text
        assert _stored(settings) == [], "the zip was neither kept nor unpacked"
        tarball = client.post("/api/articles", headers=HEADERS, files={"file": ("y.tar.gz", article_package(2202))})
        assert tarball.status_code == 202, tarball.text


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_housekeeping_prunes_old_downloads_and_sweeps_unreferenced_uploads(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", download_retention_s=3600.0, sweep_interval_s=3600.0)
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    factory = make_session_factory(engine)
    downloads = settings.downloads_dir
    downloads.mkdir(parents=True)
    old, new, wanted = downloads / "PMC1.tar.gz", downloads / "PMC2.tar.gz", downloads / "PMC3.tar.gz"
    for path in (old, new, wanted):
        path.write_bytes(b"x" * 1000)
    _age(old, 7200)
    _age(wanted, 7200)
    enqueue(factory, "ingest", {"paths": [str(wanted)]})  # a queued job still needs it
    failed_upload = settings.data_home / "uploads" / "f00" / "pkg.tar.gz"
    failed_upload.parent.mkdir(parents=True)
    failed_upload.write_bytes(b"y")
    failed = enqueue(factory, "ingest", {"paths": [str(failed_upload)]})
    with factory.begin() as s:
        job = s.get(Job, failed)
        assert job is not None
        job.state = JobState.FAILED
    _age(failed_upload.parent, 2 * 86400)

    keeper = Housekeeper(settings, factory)
    first = keeper.tick()
    assert first is not None and first.downloads == 1 and first.bytes == 1000 and first.folders == 1
    assert not old.exists() and new.exists() and wanted.exists()
    assert not failed_upload.parent.exists(), "a failed job's upload is swept without a worker restart"
    assert keeper.tick() is None, "the next pass waits for sweep_interval_s"
    assert prune_downloads(settings.model_copy(update={"download_retention_s": 0}), factory) == (0, 0)
    engine.dispose()


def test_admit_work_counts_running_jobs_too(tmp_path: Path) -> None:
    from app.quotas import NoCapacity

    settings = make_settings(tmp_path / "home", max_queued_jobs=1)
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    factory = make_session_factory(engine)
    admit_work(settings, factory)
    jid = enqueue(factory, "fetch", {"pmcids": ["PMC1"]})
    with factory.begin() as s:
        job = s.get(Job, jid)
        assert job is not None
        job.state = JobState.RUNNING
    with pytest.raises(NoCapacity) as info:
        admit_work(settings, factory)
    assert info.value.resource == "queue"
    engine.dispose()
