"""``python -m bench.facets``: what a facet request adds to a search, at 100k figures.

Builds (or reuses, under ``--work-dir``) a SQLite data home of ``--figures`` synthetic figures with
real captions (ROCO, cycled: :func:`bench.datahome.populate`), articles spread over 40 journals, 25
years and 6 licenses, every figure labelled with a figure type (drawn with the shares of a PMC-like
mix: a third charts and diagrams, a fifth radiology...) and a multi-panel flag (half the figures),
and an image index of CLIP-like synthetic vectors (IVF above 50k, as the indexer builds it). Then,
for ``--queries`` real-caption queries in each mode (lexical: the full-text channel; dense: a query
vector near an indexed figure against the image index; hybrid: both fused by RRF), it times the
service's pager (:meth:`app.pager.Pager.page`, k=24) on the same query without facets and with
``facets=type,year,journal,license``, alternating the two so they see the same machine state, and
prints, over the queries, the medians and 95th percentiles of each query's fastest of ``--repeats`` runs
and the median difference, with the load average.

    python -m bench.facets                       # 100k figures, 200 queries per mode
    python -m bench.facets --figures 20000 --queries 50 --work-dir /tmp/facets-home --candidates 200,500,1000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.channels import ChannelRunner, Channels, dense_source
from app.index_host import TimedSearcher
from app.metrics import Metrics
from app.pager import FACET_CANDIDATES, CandidateSource, Pager
from app.ranking import FusionWeights, dense_channel
from bench.datahome import captions, open_catalogue, populate, publish_vectors, query_texts, vectors
from bench.machine import load_average
from indexer.catalogue import Article, Figure
from indexer.filters import Filters
from indexer.publish import LiveIndexes
from indexer.vocabulary import FigureType

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "bench-facets"
DIM = 512
K = 24
FACETS = ("type", "year", "journal", "license")
# A PMC-like mix (charts and diagrams dominate, then radiology and microscopy, then the rest).
TYPE_SHARES = {
    FigureType.CHART: 0.24, FigureType.DIAGRAM: 0.10, FigureType.TABLE: 0.02, FigureType.CT: 0.08,
    FigureType.MRI: 0.06, FigureType.XRAY: 0.05, FigureType.ULTRASOUND: 0.03, FigureType.NUCLEAR: 0.01,
    FigureType.ANGIOGRAPHY: 0.01, FigureType.HISTOLOGY: 0.08, FigureType.FLUORESCENCE: 0.09,
    FigureType.ELECTRON: 0.02, FigureType.PHOTO: 0.08, FigureType.ENDOSCOPY: 0.01, FigureType.GEL: 0.06,
    FigureType.OTHER: 0.06,
}
LICENSES = ("CC BY 4.0", "CC BY", "CC BY-NC 4.0", "CC BY-NC-SA", "CC0", "CC BY-ND")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m bench.facets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--figures", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200, help="queries per mode")
    ap.add_argument("--work-dir", type=Path, default=None, help="data home to build or reuse (default: a temp one)")
    ap.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each query and variant; the fastest counts")
    ap.add_argument("--candidates", default=str(FACET_CANDIDATES),
                    help="comma-separated facet candidate-set sizes to compare (default: the service's)")
    return ap.parse_args(argv)


def build(home: Path, n: int, shared_data: Path) -> sessionmaker[Session]:
    """The data home of the module docstring (reused when it already holds ``n`` figures)."""
    factory = open_catalogue(home)
    with factory() as session:
        have = int(session.scalar(select(func.count(Figure.id))) or 0)
    if have == n:
        return factory
    if have:
        raise SystemExit(f"{home} holds {have} figures, not {n}: use another --work-dir")
    started = time.perf_counter()
    ids = populate(factory, n, captions(shared_data))
    rng = np.random.default_rng(18)
    kinds = list(TYPE_SHARES)
    drawn = rng.choice(len(kinds), size=n, p=np.array(list(TYPE_SHARES.values())) / sum(TYPE_SHARES.values()))
    flags = rng.random(n) < 0.5
    with factory.begin() as session:
        session.execute(update(Figure), [
            {"id": int(fid), "figure_type": kinds[int(k)].value, "type_confidence": 0.8, "type_model": MODEL_ID,
             "multipanel": bool(m), "multipanel_evidence": "caption" if m else "none"}
            for fid, k, m in zip(ids, drawn, flags, strict=True)
        ])
        art_ids = session.scalars(select(Article.id).order_by(Article.id)).all()
        session.execute(update(Article), [
            {"id": a, "journal": f"Journal of Synthetic Medicine {i % 40}", "year": 2000 + (i * 7) % 25,
             "license": LICENSES[i % len(LICENSES)]}
            for i, a in enumerate(art_ids)
        ])
    publish_vectors(factory, home / "indexes", MODEL_ID, ids, vectors(n, DIM))
    print(f"built {n} figures in {time.perf_counter() - started:.0f}s under {home}")
    return factory


def sources(factory: sessionmaker[Session], home: Path, n: int, queries: list[str]) -> dict[str, list[CandidateSource]]:
    """Per mode, one candidate source per query, made the way the service makes them."""
    metrics = Metrics()
    live = LiveIndexes(home / "indexes", MODEL_ID, use_gpu=False)
    live.refresh()
    searcher = TimedSearcher(live, metrics)
    channels = Channels(None, None, factory, metrics, FusionWeights(image=1.0), ChannelRunner(False))  # type: ignore[arg-type]
    rng = np.random.default_rng(7)
    data = vectors(n, DIM)
    picks = rng.choice(n, size=len(queries), replace=False)
    near = data[picks] + 0.35 * rng.standard_normal((len(queries), DIM)).astype(np.float32) / np.sqrt(DIM)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    size = live.ntotal("image")
    vec_of = {q: near[i : i + 1] for i, q in enumerate(queries)}
    image = dense_channel(lambda q: vec_of[q], searcher, "image")
    lexical = channels.lexical(Filters())
    return {
        "lexical": [channels.fused_source(q, {"lexical": lexical}) for q in queries],
        "dense": [dense_source(searcher, "image", vec_of[q], lambda: size) for q in queries],
        "hybrid": [channels.fused_source(q, {"lexical": lexical, "image": image}) for q in queries],
    }


def measure(
    pager: Pager, per_query: list[CandidateSource], total: int, indexed: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Per query, the fastest of ``repeats`` runs of its page without and with facets (the two
    alternating, so both see the same machine; the fastest run is the one least disturbed by the
    other processes of a shared machine), in milliseconds."""
    plain: list[float] = []
    faceted: list[float] = []
    for source in per_query:
        def run(facets: tuple[str, ...], source: CandidateSource = source) -> None:
            pager.page(source, K, 0, Filters(), total=total, indexed=indexed, version=1, facets=facets)

        run(FACETS)  # warm this query's rows in the database cache for both runs
        without, with_facets = [], []
        for r in range(repeats):
            order = ((), FACETS) if r % 2 == 0 else (FACETS, ())
            for facets in order:
                (with_facets if facets else without).append(timed(run, facets))
        plain.append(min(without))
        faceted.append(min(with_facets))
    return plain, faceted


def timed(fn: Callable[..., Any], *args: Any) -> float:
    """Milliseconds of ``fn(*args)``."""
    start = time.perf_counter()
    fn(*args)
    return 1000 * (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Build, measure, print (see the module docstring)."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-facets-") as tmp:
        home = args.work_dir or Path(tmp) / "home"
        factory = build(home, args.figures, args.shared_data)
        queries = query_texts(args.shared_data, args.queries, seed=18)
        sizes = [int(x) for x in args.candidates.split(",") if x.strip()]
        rows = []
        for mode, per_query in sources(factory, home, args.figures, queries).items():
            total = args.figures if mode == "dense" else 20_000  # the service's bound on a fused source
            for size in sizes:
                pager = Pager(factory, Metrics(), size)
                rows.append((mode, size, *measure(pager, per_query, total, args.figures, args.repeats)))
        load = load_average()
    print(f"\nfacet cost at {args.figures} figures: the pager (candidates + catalogue join, k={K}) without and "
          f"with facets={','.join(FACETS)} counted over the best N candidates; {args.queries} queries per mode, "
          f"the fastest of {args.repeats} runs each; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| mode | N | without facets, median (p95) ms | with facets, median (p95) ms | added, median ms |")
    print("|---|---|---|---|---|")
    for mode, size, plain, faceted in rows:
        added = statistics.median(f - p for f, p in zip(faceted, plain, strict=True))
        print(f"| {mode} | {size} | {statistics.median(plain):.2f} ({_p95(plain):.2f}) | "
              f"{statistics.median(faceted):.2f} ({_p95(faceted):.2f}) | {added:.2f} |")


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


if __name__ == "__main__":
    main()
