"""The Server-Timing header: phases timed inside a (sync, threadpool) route reach the response."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.metrics import REQUEST_PHASES, Metrics, timed
from app.middleware import RouteMetrics


def _parse(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, dur = part.strip().split(";dur=")
        out[name] = float(dur)
    return out


def test_phases_of_a_threadpool_route_are_reported() -> None:
    metrics = Metrics()
    app = FastAPI()

    @app.get("/work")
    def work() -> dict[str, int]:  # sync: runs in the threadpool with a copy of the context
        with timed(metrics.encode, "text"):
            time.sleep(0.02)
        with timed(metrics.db, "join"):
            time.sleep(0.005)
        with timed(metrics.db, "figure"):
            time.sleep(0.005)
        return {"ok": 1}

    app.add_middleware(RouteMetrics, metrics=metrics)
    with TestClient(app) as client:
        resp = client.get("/work")
        phases = _parse(resp.headers["server-timing"])
        assert set(phases) == {"encode", "db", "app"}
        assert phases["encode"] >= 20 and phases["db"] >= 10  # the two db blocks add up
        assert phases["app"] >= phases["encode"] + phases["db"]
        # unknown routes get the header too (only app time), and nothing leaks between requests
        other = _parse(client.get("/nope").headers["server-timing"])
        assert set(other) == {"app"}
    assert REQUEST_PHASES.get() is None


def test_hybrid_channels_run_side_by_side_and_report_the_slowest() -> None:
    """A hybrid query's channels run concurrently: the wait is the slowest channel's, the results are
    the sequential ones, and Server-Timing carries the slowest channel's phases (not the sum)."""
    from app.channels import ChannelRunner
    from app.ranking import ChannelHit

    metrics = Metrics()

    def channel(delay: float, phase: str) -> Callable[[str, int], list[ChannelHit]]:
        def search(query: str, n: int) -> list[ChannelHit]:
            with timed(metrics.encode if phase == "encode" else metrics.index_search, "x"):
                time.sleep(delay)
            return [ChannelHit(i, 1.0 / i) for i in range(1, n + 1)]
        return search

    channels = {"lexical": channel(0.15, "index_search"), "image": channel(0.3, "encode"),
                "caption": channel(0.15, "encode")}
    service = ChannelRunner(parallel=True)
    try:
        phases: dict[str, float] = {}
        token = REQUEST_PHASES.set(phases)
        start = time.perf_counter()
        try:
            results = service.run(channels, "q", 5)
        finally:
            REQUEST_PHASES.reset(token)
        wall = time.perf_counter() - start
        assert results == {name: ch("q", 5) for name, ch in channels.items()}
        assert wall < 0.5  # side by side: ~0.3 s, one after another 0.6 s
        assert set(phases) == {"encode"} and 0.3 <= phases["encode"] < 0.45
        sequential = ChannelRunner(parallel=False)
        start = time.perf_counter()
        assert sequential.run(channels, "q", 5) == results
        assert time.perf_counter() - start >= 0.6
    finally:
        service.close()
