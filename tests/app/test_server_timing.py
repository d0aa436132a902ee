"""The Server-Timing header: phases timed inside a (sync, threadpool) route reach the response."""

from __future__ import annotations

import time

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
