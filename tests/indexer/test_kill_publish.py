"""kill -9 during publication: the published index still loads and agrees with the catalogue."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from vector_fixtures import MODEL, factory_for, populate

from indexer.index_update import IndexOptions, check_indexes, update_indexes
from indexer.publish import LiveIndexes

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("publish_child.py")


def _spawn(url: str, index_dir: Path, exact_max: int, pause: float, rebuild: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(CHILD), url, str(index_dir), MODEL, str(exact_max), str(pause), str(int(rebuild))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _kill_at(proc: subprocess.Popen[str], step: str) -> list[str]:
    """Read the child's steps until ``step``, then SIGKILL it; return the steps seen."""
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line.strip())
        if seen[-1] == step:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert seen and seen[-1] == step, f"child never reached {step}: {seen} {proc.stderr.read() if proc.stderr else ''}"
    return seen


def _assert_loadable_and_agreeing(url: str, index_dir: Path) -> None:
    """The published versions load, match their catalogue rows, and hold only stored vectors;
    a following update brings everything in and check finds nothing to repair."""
    factory = factory_for(url)
    live = LiveIndexes(index_dir, MODEL)
    live.refresh()
    for kind in ("image", "caption"):
        assert live.version(kind) is not None, f"{kind}: nothing loadable after the kill"
        _, found = live.search(kind, np.ones((1, 32), np.float32) / np.sqrt(32), 5)
        assert (found >= 0).all()
    report = check_indexes(factory, index_dir, MODEL, options=IndexOptions(exact_index_max=300))
    for chk in report.kinds.values():
        assert not chk.problems, chk.line()  # file intact, recorded with the same ids digest
        assert chk.stale == 0, chk.line()  # nothing in the index that the catalogue lacks
    update_indexes(factory, index_dir, MODEL, options=IndexOptions(exact_index_max=300), progress=False)
    after = check_indexes(factory, index_dir, MODEL)
    assert after.ok, after.summary()
    live.refresh()
    assert live.ntotal("image") == live.ntotal("caption") == 600


# One kill per distinct on-disk state: temp file only; file placed but not recorded; recorded but
# not published; image published, caption not yet.
STEPS = ["image:written", "image:placed", "image:recorded", "caption:begin"]


@pytest.mark.e2e
@pytest.mark.parametrize("step", STEPS)
def test_kill_at_each_publication_step(sqlite_url: str, tmp_path: Path, step: str) -> None:
    factory = factory_for(sqlite_url)
    populate(factory, 200)
    update_indexes(factory, tmp_path, MODEL, options=IndexOptions(exact_index_max=300), progress=False)
    populate(factory, 400, seed=9, article_key="pmcid:PMC9")  # 600 > 300: the child switches to IVF
    _kill_at(_spawn(sqlite_url, tmp_path, 300, 0.2), step)
    _assert_loadable_and_agreeing(sqlite_url, tmp_path)


@pytest.mark.e2e
def test_kill_at_random_moments(db_url: str, tmp_path: Path) -> None:
    """Rebuild-and-publish runs killed at uniformly random moments of their duration."""
    factory = factory_for(db_url)
    populate(factory, 200)
    update_indexes(factory, tmp_path, MODEL, options=IndexOptions(exact_index_max=300), progress=False)
    populate(factory, 400, seed=9, article_key="pmcid:PMC9")
    t0 = time.perf_counter()
    proc = _spawn(db_url, tmp_path, 300, 0.0, rebuild=True)
    out, err = proc.communicate(timeout=120)
    duration = time.perf_counter() - t0
    assert proc.returncode == 0 and out.strip().endswith("done"), err
    rng = random.Random(1234)
    for _ in range(3):
        proc = _spawn(db_url, tmp_path, 300, 0.0, rebuild=True)
        time.sleep(rng.uniform(0.0, duration))
        proc.kill()  # SIGKILL
        proc.communicate(timeout=60)
        _assert_loadable_and_agreeing(db_url, tmp_path)
