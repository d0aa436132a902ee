"""Durable jobs on the jobs table (SQLite and PostgreSQL): atomic claims, heartbeats, stale
re-queueing after a worker dies, and a full ingest -> embed -> publish run with the real encoder."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from pathlib import Path

import pytest
from app_fixtures import make_settings
from sqlalchemy import select, update

from app.jobs import Worker, claim_next, enqueue, heartbeat, job_counts, requeue_stale
from indexer.catalogue import Figure, Job, make_engine, make_session_factory, utcnow
from indexer.publish import LiveIndexes


@pytest.fixture
def factory(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_concurrent_claims_never_share_a_job(factory) -> None:  # type: ignore[no-untyped-def]
    ids = [enqueue(factory, "fetch", {"pmcids": [f"PMC{i}"]}) for i in range(12)]
    claimed: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def grab(name: str) -> None:
        barrier.wait()
        mine = claimed.setdefault(name, [])
        while (job := claim_next(factory, name)) is not None:
            assert job.state == "running" and job.worker == name and job.attempts == 1
            mine.append(job.id)

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [jid for jobs in claimed.values() for jid in jobs]
    assert sorted(got) == ids  # every job claimed exactly once
    assert job_counts(factory) == {"queued": 0, "running": 12, "done": 0, "failed": 0}


def test_claims_take_the_oldest_first_and_only_queued(factory) -> None:  # type: ignore[no-untyped-def]
    a = enqueue(factory, "fetch", {"pmcids": ["PMC1"]})
    b = enqueue(factory, "ingest", {"paths": []})
    first = claim_next(factory, "w")
    assert first is not None and first.id == a
    second = claim_next(factory, "w")
    assert second is not None and second.id == b
    assert claim_next(factory, "w") is None
    with pytest.raises(ValueError):
        enqueue(factory, "explode", {})


def test_stale_running_jobs_are_requeued_then_failed_after_max_attempts(factory) -> None:  # type: ignore[no-untyped-def]
    jid = enqueue(factory, "fetch", {"pmcids": ["PMC1"]})
    job = claim_next(factory, "dead-worker")
    assert job is not None and heartbeat(factory, jid, "dead-worker")
    assert requeue_stale(factory, stale_after_s=60, max_attempts=2) == 0  # fresh heartbeat: left alone
    old = utcnow() - dt.timedelta(minutes=5)
    with factory.begin() as s:
        s.execute(update(Job).where(Job.id == jid).values(heartbeat_at=old))
    assert requeue_stale(factory, stale_after_s=60, max_attempts=2) == 1
    with factory() as s:
        row = s.get(Job, jid)
        assert row is not None and row.state == "queued" and row.worker is None
    assert not heartbeat(factory, jid, "dead-worker")  # the dead worker no longer owns it
    again = claim_next(factory, "second")
    assert again is not None and again.id == jid and again.attempts == 2
    with factory.begin() as s:
        s.execute(update(Job).where(Job.id == jid).values(heartbeat_at=old))
    requeue_stale(factory, stale_after_s=60, max_attempts=2)
    with factory() as s:
        row = s.get(Job, jid)
        assert row is not None and row.state == "failed"


def test_worker_resumes_a_job_its_dead_predecessor_left_running(
    db_url: str, tmp_path: Path, tiny_model_dir: Path, shared_data: Path, factory
) -> None:  # type: ignore[no-untyped-def]
    """Upload-style job claimed by a worker that died: a new worker re-queues it and runs all stages."""
    from training.encoders import load_encoder

    home = tmp_path / "home"
    settings = make_settings(home, db_url, model=f"local-dir:{tiny_model_dir}", job_stale_s=0.5)
    upload = home / "uploads" / "abc" / "elife-00353.tar.gz"
    upload.parent.mkdir(parents=True)
    shutil.copy(shared_data / "jats" / "packages" / "elife-00353.tar.gz", upload)
    zipped = home / "uploads" / "def" / "pone.0060593.zip"
    zipped.parent.mkdir(parents=True)
    shutil.copy(shared_data / "jats" / "malformed" / "pone.0060593.zip", zipped)
    jid = enqueue(factory, "ingest", {"paths": [str(upload), str(zipped)]})
    assert claim_next(factory, "crashed-worker") is not None  # ... and it never heartbeats again

    encoder = load_encoder(f"local-dir:{tiny_model_dir}", device="cpu")
    published: list[tuple[int, int]] = []  # (image, caption) vectors live at each publication

    def on_published() -> None:
        live = LiveIndexes(settings.index_dir, encoder.model_id)
        live.refresh()
        published.append((live.ntotal("image"), live.ntotal("caption")))

    worker = Worker(settings, factory, lambda: encoder, on_published=on_published)
    import time

    time.sleep(0.6)
    assert worker.run_once() == jid
    with factory() as s:
        job = s.get(Job, jid)
        assert job is not None
        assert job.state == "done", job.errors
        assert job.progress == 1.0 and job.attempts == 2 and job.stage == "done"
        assert job.counts["articles_added"] == 2
        n_figs = len(s.scalars(select(Figure.id)).all())
        assert job.counts["figures"] == n_figs and job.counts["caption_vectors"] == n_figs
        assert job.counts["image_vectors"] == job.counts["images"] > 0
    # the image vectors are published first (the new figures are searchable), then the captions
    n_images = job.counts["images"]
    assert published == [(n_images, 0), (n_images, n_figs)]
    assert {"ingest", "embed", "publish", "captions", "publish_captions"} <= set(job.counts["seconds"])
    assert not upload.parent.exists() and not zipped.parent.exists()  # uploads cleaned after success
    live = LiveIndexes(settings.index_dir, encoder.model_id)
    assert live.refresh() and live.ntotal("caption") == n_figs


def test_a_failing_job_records_its_stage_and_reason(db_url: str, tmp_path: Path, factory) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "home", db_url)
    bogus = tmp_path / "home" / "uploads" / "x" / "gone.tar.gz"
    jid = enqueue(factory, "ingest", {"paths": [str(bogus)]})

    def no_encoder() -> object:
        raise AssertionError("must not be reached")

    assert Worker(settings, factory, no_encoder).run_once() == jid
    with factory() as s:
        job = s.get(Job, jid)
        assert job is not None and job.state == "failed" and job.stage == "ingest"
        assert "no longer exist" in job.errors[-1]["message"]
        assert job.finished_at is not None


def test_a_worker_without_an_encoder_claims_nothing_and_says_why(tmp_path: Path, factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 17: an encoder still loading (or none configured) must not fail embed work; the job
    stays queued with no attempt spent, and is run once the encoder is there."""
    settings = make_settings(tmp_path / "home")
    jid = enqueue(factory, "ingest", {"paths": [str(tmp_path / "home" / "uploads" / "x" / "gone.tar.gz")]})
    reason: list[str | None] = ["the encoder is still loading"]

    def encoder() -> object:
        raise AssertionError("no job may reach its embed stage")

    worker = Worker(settings, factory, encoder, encoder_ready=lambda: reason[0])
    for _ in range(3):
        assert worker.run_once() is None
    with factory() as s:
        job = s.get(Job, jid)
        assert job is not None and job.state == "queued" and job.attempts == 0 and job.worker is None
        assert job.errors == [] and job.stage is None
    assert worker.waiting == "1 queued job(s) wait for the encoder: the encoder is still loading"

    reason[0] = None  # loaded: the job is claimed (and fails in ingest: its upload is gone)
    assert worker.run_once() == jid
    assert worker.waiting is None
    with factory() as s:
        job = s.get(Job, jid)
        assert job is not None and job.state == "failed" and job.stage == "ingest" and job.attempts == 1


def test_the_service_without_a_model_keeps_uploads_queued_and_readyz_says_why(
    tmp_path: Path, shared_data: Path
) -> None:
    """The API's own worker with no encoder (none configured, none exported): the upload is
    accepted and stays queued; ``/readyz`` names the missing encoder and the waiting job."""
    import time

    from app_fixtures import API_KEY
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = make_settings(tmp_path / "home", run_worker=True, worker_poll_s=0.05)
    package = shared_data / "jats" / "packages" / "elife-00353.tar.gz"
    with TestClient(create_app(settings)) as client:
        resp = client.post(
            "/api/articles", files={"file": (package.name, package.read_bytes())}, headers={"X-API-Key": API_KEY}
        )
        assert resp.status_code == 202, resp.text
        deadline = time.monotonic() + 30
        while True:  # the worker polls several times; each time it must leave the job alone
            ready = client.get("/readyz")
            reasons = ready.json()["reasons"]
            if any("wait for the encoder" in r for r in reasons) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        job = client.get(resp.json()["status_url"]).json()
    assert ready.status_code == 503
    assert any(r.startswith("no encoder configured") for r in reasons), reasons
    assert "1 queued job(s) wait for the encoder: no encoder configured" in " ".join(reasons), reasons
    assert job["state"] == "queued" and job["attempts"] == 0 and job["errors"] == [], job


def test_sweep_removes_only_old_unreferenced_leftovers(factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import os
    import time

    from app.jobs import sweep_leftovers

    home = tmp_path / "home"
    settings = make_settings(home)
    uploads, unpack = home / "uploads", home / ".tmp"
    old = time.time() - 7200

    def folder(path: Path, *, aged: bool) -> Path:
        path.mkdir(parents=True)
        (path / "pkg.tar.gz").write_bytes(b"x")
        if aged:
            os.utime(path, (old, old))
        return path

    orphan = folder(uploads / "orphan", aged=True)  # its job finished, the cleanup was killed
    queued = folder(uploads / "queued", aged=True)  # a queued job still needs it
    fresh = folder(uploads / "fresh", aged=False)  # being saved right now, its job not yet queued
    stale_unpack = folder(unpack / "bms-pkg-abc", aged=True)
    fresh_unpack = folder(unpack / "bms-pkg-def", aged=False)
    enqueue(factory, "ingest", {"paths": [str(queued / "pkg.tar.gz")]})

    assert sweep_leftovers(settings, factory) == 2
    assert not orphan.exists() and not stale_unpack.exists()
    assert queued.exists() and fresh.exists() and fresh_unpack.exists()
