"""Scale-out as deployed (issue 17): two API processes and two ``biomedsearch worker`` processes on one
PostgreSQL catalogue and one data home, the topology of ``docker-compose.yml``.

Thirty articles are uploaded through both APIs while a client keeps searching both; one worker is
SIGKILLed while it holds a job. Afterwards every job is done, every article is in the catalogue,
embedded and indexed exactly once, no search answered 5xx, both API processes serve the final
publication (their ``/readyz`` count every figure and a search sees all of them), and
``biomedsearch check`` finds the indexes in step with the catalogue.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reliability_fixtures import (
    API_KEY,
    FAKE_MODEL_ID,
    article_package,
    assert_consistent,
    child_env,
    make_settings,
)
from sqlalchemy import select

from indexer.catalogue import Job, make_engine, make_session_factory

pytestmark = [pytest.mark.postgres, pytest.mark.e2e, pytest.mark.slow]

CHILD = Path(__file__).with_name("cli_child.py")
ARTICLES = 30
STALE_S = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path, db_url: str) -> dict[str, str]:
    return child_env(home, db_url, api_key=API_KEY, host="127.0.0.1", job_stale_s=str(STALE_S),
                     worker_poll_s="0.1", index_poll_s="0.2", encode_batch_size="2")


class Searcher(threading.Thread):
    """Searches every API in turn until stopped; counts answers by status."""

    def __init__(self, bases: list[str]) -> None:
        super().__init__(daemon=True)
        self.bases = bases
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        queries = ["chest CT", "western blot", "survival curve", "brain MRI"]
        i = 0
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                base = self.bases[i % len(self.bases)]
                try:
                    resp = client.get(f"{base}/api/search", params={"q": queries[i % len(queries)], "k": 10})
                    self.statuses[resp.status_code] += 1
                    if resp.status_code >= 500:
                        self.errors.append(f"{base}: {resp.status_code} {resp.text[:300]}")
                except httpx.HTTPError as exc:
                    self.errors.append(f"{base}: {exc!r}")
                i += 1
                time.sleep(0.02)


def _wait(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_two_apis_two_workers_one_postgres_a_worker_killed_mid_job(
    empty_postgres_url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    home = tmp_path / "home"
    env = _env(home, empty_postgres_url)
    log = open(tmp_path / "children.log", "ab")  # noqa: SIM115  (closed at the end)

    def start(delay: str, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, str(CHILD), delay, *argv], cwd=tmp_path, env=env, stdout=log,
                                stderr=log)
        processes.append(proc)
        return proc

    def logs() -> str:
        log.flush()
        return (tmp_path / "children.log").read_text(errors="replace")[-4000:]

    migrated = subprocess.run([sys.executable, str(CHILD), "0", "db", "upgrade"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    ports = [_free_port(), _free_port()]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    for port in ports:
        start("0", "serve", "--port", str(port), "--no-worker", "--log-level", "warning")
    with httpx.Client(timeout=5) as http:

        def up(base: str) -> bool:
            try:
                return http.get(f"{base}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        _wait(lambda: all(up(b) for b in bases), 60, f"both APIs to answer; logs: {logs()}")
        workers = [start("0.05", "worker"), start("0.05", "worker")]
        searcher = Searcher(bases)
        searcher.start()

        expected: dict[str, int] = {}
        for i in range(ARTICLES):
            pmcid, n = 7000 + i, 1 + i % 3
            resp = http.post(f"{bases[i % 2]}/api/articles", headers={"X-API-Key": API_KEY},
                             files={"file": (f"PMC{pmcid}.tar.gz", article_package(pmcid, n))})
            assert resp.status_code == 202, resp.text
            expected[f"pmcid:PMC{pmcid}"] = n

        engine = make_engine(empty_postgres_url)
        factory = make_session_factory(engine)
        victim = workers[0]

        def victim_holds_a_job() -> bool:
            with factory() as s:
                holders = s.scalars(select(Job.worker).where(Job.state == "running")).all()
            return any(h and f":{victim.pid}:" in h for h in holders)

        _wait(victim_holds_a_job, 90, f"worker {victim.pid} to claim a job; logs: {logs()}")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(30)

        def all_done() -> bool:
            with factory() as s:
                states = Counter(s.scalars(select(Job.state)))
            return states == Counter({"done": ARTICLES})

        _wait(all_done, 180, f"every job to be done; logs: {logs()}")
        figures = sum(expected.values())

        def both_see_everything() -> bool:
            sizes = [http.get(f"{b}/readyz").json().get("indexes", {}) for b in bases]
            return all(s.get("image") == figures and s.get("caption") == figures for s in sizes)

        _wait(both_see_everything, 30, "both APIs to load the last publication")
        for base in bases:
            page = http.get(f"{base}/api/search", params={"q": "chest CT", "k": 100, "mode": "dense"}).json()
            assert len(page.get("results", [])) == figures, (base, page, logs())
        searcher.stop.set()
        searcher.join(30)

    assert not searcher.errors, searcher.errors[:5]
    assert searcher.statuses[200] > 20, searcher.statuses
    assert set(searcher.statuses) <= {200, 503}, searcher.statuses  # 503 only before the first publication
    settings = make_settings(home, empty_postgres_url)
    counts = assert_consistent(factory, home, settings.index_dir, FAKE_MODEL_ID, expected)
    assert counts == {"articles": ARTICLES, "figures": figures}
    with factory() as s:
        attempts = Counter(s.scalars(select(Job.attempts)))
    assert sum(n for a, n in attempts.items() if a >= 2) >= 1, f"the killed worker's job was not retried: {attempts}"
    engine.dispose()
    check = subprocess.run([sys.executable, str(CHILD), "0", "check"], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    log.close()
