"""Prometheus metrics of one service instance.

Every :func:`app.main.create_app` builds its own :class:`Metrics` on a private
``CollectorRegistry`` (so several apps in one process, as in the tests, never collide) and
exposes it at ``GET /metrics``:

- ``biomedsearch_http_request_duration_seconds{method,route,status}``: latency per route template;
- ``biomedsearch_encode_seconds{kind}``: query encoding time (``text`` / ``image``);
- ``biomedsearch_index_search_seconds{kind}``: search time per index (FAISS ``image`` / ``caption``,
  full-text ``lexical``);
- ``biomedsearch_db_seconds{op}``: catalogue time (``join``, ``figure``, ``article``, ``jobs`` ...);
- ``biomedsearch_query_cache_total{result}``: text-embedding cache ``hit`` / ``miss``;
- ``biomedsearch_index_vectors{kind}``: vectors in the live index (read at scrape time);
- ``biomedsearch_jobs{state}``: re-index jobs per state (read from the ``jobs`` table at scrape time).

Every :func:`timed` block inside a request also adds its time to that request's phase totals
(:data:`REQUEST_PHASES`, set by :class:`app.middleware.RouteMetrics`), which the response carries in
a ``Server-Timing`` header (``encode``, ``index_search``, ``db`` and ``app``, the whole handling, in
ms), so a client can split its latency without scraping ``/metrics``. When a hybrid query runs its
channels side by side, the header carries the phases of the slowest channel (the request waited
for that one), not the sum over channels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REQUEST_PHASES: ContextVar[dict[str, float] | None] = ContextVar("biomedsearch_request_phases", default=None)
"""Seconds per phase of the current request (None outside a request); see :func:`timed`."""

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _CallbackGauges(Collector):
    """Gauges whose values are read at scrape time from callbacks (index sizes, job counts)."""

    def __init__(
        self,
        index_sizes: Callable[[], dict[str, int]],
        job_counts: Callable[[], dict[str, int]],
    ) -> None:
        self._index_sizes = index_sizes
        self._job_counts = job_counts

    def collect(self) -> Iterable[Metric]:
        """Yield the two gauge families; a failing callback yields an empty family."""
        sizes = GaugeMetricFamily("biomedsearch_index_vectors", "Vectors in the live index.", labels=["kind"])
        for kind, n in _safe(self._index_sizes).items():
            sizes.add_metric([kind], float(n))
        yield sizes
        jobs = GaugeMetricFamily("biomedsearch_jobs", "Re-index jobs per state.", labels=["state"])
        for state, n in _safe(self._job_counts).items():
            jobs.add_metric([state], float(n))
        yield jobs


def _safe(callback: Callable[[], dict[str, int]]) -> dict[str, int]:
    try:
        return callback()
    except Exception:  # a scrape must not fail because the database or index is down
        return {}


class Metrics:
    """The histograms and counters of one app, on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http = Histogram(
            "biomedsearch_http_request_duration_seconds",
            "HTTP request latency per route template.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.encode = Histogram(
            "biomedsearch_encode_seconds",
            "Query encoding time.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.index_search = Histogram(
            "biomedsearch_index_search_seconds",
            "Vector index search time.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.db = Histogram(
            "biomedsearch_db_seconds",
            "Catalogue (database) time.",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.query_cache = Counter(
            "biomedsearch_query_cache",
            "Text-query embedding cache lookups.",
            ["result"],
            registry=self.registry,
        )

    def register_gauges(
        self,
        index_sizes: Callable[[], dict[str, int]],
        job_counts: Callable[[], dict[str, int]],
    ) -> None:
        """Expose index sizes and job counts, read from the callbacks at every scrape."""
        self.registry.register(_CallbackGauges(index_sizes, job_counts))

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


@contextmanager
def timed(histogram: Histogram, *labels: str) -> Iterator[None]:
    """Observe the wall time of the ``with`` block into ``histogram.labels(*labels)``, and add it to
    the current request's phase totals (phase: the histogram name without ``biomedsearch_`` and
    ``_seconds``)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        histogram.labels(*labels).observe(elapsed)
        phases = REQUEST_PHASES.get()
        if phases is not None:
            phase = str(getattr(histogram, "_name", "other")).removeprefix("biomedsearch_").removesuffix("_seconds")
            phases[phase] = phases.get(phase, 0.0) + elapsed
