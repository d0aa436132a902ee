"""Crash safety: SIGKILL the ``biomedsearch worker`` process at random moments while it re-indexes.

Articles are accepted through the API (``POST /api/articles``: PMC-style ``.tar.gz`` packages, a
zipped JATS folder, a package of several articles, a re-submission), some before the kills start
and some while they go on. A real worker process (the CLI command, with the fake encoder so that a
restart takes about a second) is started, killed with SIGKILL after a random delay, restarted, ...
for a bounded time; then one last worker drains the queue. Afterwards every job is done, and
catalogue, stored embeddings and the published indexes agree: every accepted article is in the
catalogue once, each of its figures has its image on disk, one vector per kind, and its id once in
each index (``check_indexes`` finds nothing to repair).

``BIOMEDSEARCH_KILL_BUDGET_S`` (default 16) bounds the kill loop per database backend (a new batch
of uploads arrives every third kill while time remains, so a longer budget means more kills);
``BIOMEDSEARCH_KILL_SEED`` fixes the random delays (printed on failure).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from fastapi.testclient import TestClient
from reliability_fixtures import (
    API_KEY,
    FAKE_MODEL_ID,
    FakeEncoder,
    article_package,
    article_zip,
    assert_consistent,
    child_env,
    make_settings,
    package_members,
    tar_gz,
)
from sqlalchemy import select

from app.main import create_app
from indexer.catalogue import Job, make_engine, make_session_factory

CHILD = Path(__file__).with_name("worker_child.py")
STALE_S = 1.0


def _worker_env(home: Path, db_url: str) -> dict[str, str]:
    # Kills here are far more frequent than crashes in service: a job is killed many times and must
    # still finish, so the poison-job cap is lifted for this test.
    return child_env(home, db_url, job_stale_s=str(STALE_S), job_max_attempts="100000", worker_poll_s="0.1",
                     encode_batch_size="2")


def _submit(client: TestClient, name: str, data: bytes) -> int:
    resp = client.post("/api/articles", files={"file": (name, data)}, headers={"X-API-Key": API_KEY})
    assert resp.status_code == 202, resp.text
    return int(resp.json()["job_id"])


def _submit_batch(client: TestClient, first: int, expected: dict[str, int]) -> list[int]:
    """Queue a mix of uploads for PMCIDs ``first..first+9``; record the articles they hold."""
    jobs = []
    for i in range(6):  # single-article packages
        pmcid = first + i
        n = 1 + i % 3
        jobs.append(_submit(client, f"PMC{pmcid}.tar.gz", article_package(pmcid, n)))
        expected[f"pmcid:PMC{pmcid}"] = n
    for i in range(6, 8):  # zipped JATS folders
        pmcid = first + i
        jobs.append(_submit(client, f"PMC{pmcid}.zip", article_zip(pmcid, 2)))
        expected[f"pmcid:PMC{pmcid}"] = 2
    # one package holding two article folders
    members = package_members(first + 8, 2) + package_members(first + 9, 3)
    jobs.append(_submit(client, "bundle.tar.gz", tar_gz(members)))
    expected[f"pmcid:PMC{first + 8}"] = 2
    expected[f"pmcid:PMC{first + 9}"] = 3
    # the same article again (as a zip this time): must not be catalogued twice
    jobs.append(_submit(client, "again.zip", article_zip(first, 1)))
    return jobs


def _running_stages(factory) -> list[str]:  # type: ignore[no-untyped-def]
    with factory() as s:
        return [st or "claimed" for st in s.scalars(select(Job.stage).where(Job.state == "running"))]


def _job_states(factory) -> Counter[str]:  # type: ignore[no-untyped-def]
    with factory() as s:
        return Counter(s.scalars(select(Job.state)))


def test_worker_killed_at_random_moments_loses_and_duplicates_nothing(db_url: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("BIOMEDSEARCH_KILL_SEED", str(random.randrange(1 << 30))))
    budget = float(os.environ.get("BIOMEDSEARCH_KILL_BUDGET_S", "16"))
    rng = random.Random(seed)
    home = tmp_path / "home"
    settings = make_settings(home, db_url)
    env = _worker_env(home, db_url)
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    expected: dict[str, int] = {}
    kills = 0
    stages: Counter[str] = Counter()
    log = tmp_path / "worker.log"
    with TestClient(create_app(settings, encoder_loader=lambda s, d: FakeEncoder())) as client:
        jobs = _submit_batch(client, 1000, expected)
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            with open(log, "ab") as err:
                proc = subprocess.Popen(
                    [sys.executable, str(CHILD), "0.03"], cwd=tmp_path, env=env, stdout=err, stderr=err
                )
            time.sleep(rng.uniform(0.5, 3.0))
            assert proc.poll() is None, f"the worker exited by itself (seed {seed}): {log.read_text()[-3000:]}"
            running = _running_stages(factory)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            kills += 1
            stages.update(running or ["idle/starting"])
            if kills % 3 == 0 and time.monotonic() < deadline - 3:  # more arrive while it keeps crashing
                jobs += _submit_batch(client, 1000 * (kills // 3 + 1), expected)
            elif kills >= 3 and _job_states(factory)["done"] == len(jobs):
                break
        # let the last killed worker's job go stale, then one worker drains the queue
        time.sleep(STALE_S + 0.3)
        final = subprocess.run(
            [sys.executable, str(CHILD), "0", "--once"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert final.returncode == 0, final.stdout + final.stderr
    summary = f"seed {seed}: {kills} kills, {len(jobs)} jobs, {len(expected)} articles, stages {dict(stages)}"
    print(summary)
    states = _job_states(factory)
    with factory() as s:
        failed = [(j.id, j.errors) for j in s.scalars(select(Job).where(Job.state != "done"))]
    assert states == Counter({"done": len(jobs)}), f"{summary}; not done: {failed}"
    counts = assert_consistent(factory, home, settings.index_dir, FAKE_MODEL_ID, expected)
    assert counts["articles"] == len(expected) >= 20
    assert kills >= 3, summary
    engine.dispose()

