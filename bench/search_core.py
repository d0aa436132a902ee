"""Stage ``search``: the vector search core at 100k / 1M vectors, ours against what users would pick.

For each size ``n`` (dim 512, :mod:`bench.synthetic` data, queries drawn near indexed points):

- **exact**: the project's exact index (``IDMap2,Flat``, :meth:`VectorIndex.exact`).
- **ours**: the approximate index exactly as ``indexer.index_update`` builds it (``AnnSpec()``:
  IVF + codec trained on a sample, nprobe auto-tuned to Recall@10 >= 0.95 on held-out indexed
  vectors). Reported at the auto-tuned nprobe, and at the smallest nprobe whose Recall@10 on the
  benchmark queries reaches the target (the same sweep every alternative gets).
- **hnswlib** (M=16, ef_construction=100, as chromadb) and **chromadb** (its HNSW, ``space=ip``): ``ef`` swept
  up to the smallest value whose Recall@10 on the benchmark queries reaches the target.
- **ours, HNSW** (``BIOMEDSEARCH_INDEX_STRUCTURE=hnsw``): ``IDMap2,HNSW24_SQ8`` (FAISS's HNSW graph
  over 8-bit codes, efConstruction 100 as hnswlib), efSearch tuned and swept like nprobe.

Every latency is measured one query at a time on one thread (``faiss.omp_set_num_threads(1)``,
``hnswlib.set_num_threads(1)``; chromadb's query path) over ``--latency-queries`` queries: queries/s
is their count over the total time, p50/p99 are per-query. Recall@10 is against exact search on
all benchmark queries. Memory: the serialised index size where the library can write one, and the
growth of this process's resident memory while the index was built. Build time includes training,
adding and (for ours) nprobe tuning.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.machine import rss_bytes
from bench.synthetic import MixtureSpec, describe, embedding_mixture, exact_truth, queries_near
from indexer.vector_index import AnnSpec, VectorIndex, exact_neighbours, tune_nprobe

K = 10
TARGET = 0.95
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100  # chromadb's default too; 200 doubles a 1M build on 2 cores
EF_SWEEP = (10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass
class Row:
    """One index at one size."""

    size: int
    index: str
    params: str
    build_s: float
    recall: float
    qps: float
    p50_ms: float
    p99_ms: float
    index_mb: float | None
    rss_mb: float
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    """Mean |found[:k] ∩ truth[:k]| / k over rows (ids compared as sets)."""
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k], strict=True):
        hits += len(set(f.tolist()) & set(t.tolist()))
    return hits / (truth.shape[0] * k)


def single_query_latency(search_one: Callable[[np.ndarray], Any], queries: np.ndarray) -> dict[str, float]:
    """Time ``search_one(q[None])`` per query (after 5 warm-up calls): qps, p50, p99 (ms)."""
    for q in queries[:5]:
        search_one(q[None, :])
    times = np.empty(queries.shape[0])
    for i, q in enumerate(queries):
        t = time.perf_counter()
        search_one(q[None, :])
        times[i] = time.perf_counter() - t
    return {
        "qps": float(queries.shape[0] / times.sum()),
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
    }


def _file_mb(index: faiss.Index) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.faiss"
        faiss.write_index(index, str(path))
        return path.stat().st_size / 1e6


def _sweep(evaluate: Callable[[int], float], values: tuple[int, ...]) -> tuple[int, float, dict[int, float]]:
    """The smallest value whose recall reaches TARGET (or the last tried): (value, recall, curve)."""
    curve: dict[int, float] = {}
    for v in values:
        curve[v] = evaluate(v)
        if curve[v] >= TARGET:
            return v, curve[v], curve
    last = values[-1]
    return last, curve[last], curve


def _nprobe_values(nlist: int) -> tuple[int, ...]:
    vals = sorted({1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 128, 192, 256})
    return tuple(v for v in vals if v <= nlist) + ((nlist,) if nlist > 256 else ())


def bench_exact(n: int, xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, truth: np.ndarray, lat_q: int) -> Row:
    """The project's exact index."""
    rss0 = rss_bytes()
    t = time.perf_counter()
    vi = VectorIndex.exact(xb.shape[1])
    vi.add(ids, xb)
    build = time.perf_counter() - t
    rss = rss_bytes() - rss0
    faiss.omp_set_num_threads(1)
    lat = single_query_latency(lambda q: vi.search(q, K), xq[:lat_q])
    _, found = vi.search(xq[:lat_q], K)
    row = Row(n, "exact (ours: IDMap2,Flat)", "-", build, recall_at(ids_to_pos(found), truth[:lat_q]), lat["qps"],
              lat["p50_ms"], lat["p99_ms"], _file_mb(vi.index), rss / 1e6)
    gc.collect()
    return row


def bench_ours(
    n: int, xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, truth: np.ndarray, lat_q: int, threads: int,
    structure: str = "ivf",
) -> list[Row]:
    """The approximate index as the indexer builds it (``structure``: ``ivf``, the default, or ``hnsw``,
    ``BIOMEDSEARCH_INDEX_STRUCTURE=hnsw``): train, add, tune the search effort on held-out vectors."""
    rss0 = rss_bytes()
    t = time.perf_counter()
    faiss.omp_set_num_threads(threads)
    spec = AnnSpec(structure=structure)  # the indexer's defaults (HNSW: M=24, efConstruction=100)
    vi = VectorIndex.train_ann(xb, spec)
    vi.add(ids, xb)
    # the indexer's tuning protocol (index_update._tune): 500 held-out indexed vectors, own id excluded
    rng = np.random.default_rng(spec.seed + 1)
    pick = np.sort(rng.choice(n, min(500, n), replace=False))
    own, exclude = xb[pick], ids[pick]
    choice = tune_nprobe(vi, [(own, exact_neighbours(xb, ids, own, K, exclude), exclude)], k=K, target=TARGET)
    build = time.perf_counter() - t
    rss = rss_bytes() - rss0
    knob = "efSearch" if structure == "hnsw" else "nprobe"
    values = EF_SWEEP if structure == "hnsw" else _nprobe_values(int(vi.params["nlist"]))
    mb = _file_mb(vi.index)

    def evaluate(nprobe: int) -> float:
        vi.set_nprobe(nprobe)
        _, found = vi.search(xq, K)
        return recall_at(ids_to_pos(found), truth)

    auto_recall = evaluate(choice.nprobe)
    swept, swept_recall, curve = _sweep(evaluate, values)
    rows = []
    factory = vi.params["factory"]
    for label, nprobe, recall in (("auto-tuned", choice.nprobe, auto_recall), ("swept", swept, swept_recall)):
        if label == "swept" and nprobe == choice.nprobe:
            rows[0].notes += "; auto-tuned nprobe is also the sweep's pick"
            continue
        vi.set_nprobe(nprobe)
        faiss.omp_set_num_threads(1)
        lat = single_query_latency(lambda q: vi.search(q, K), xq[:lat_q])
        faiss.omp_set_num_threads(threads)
        rows.append(
            Row(n, f"ours: {factory} ({label})", f"{knob}={nprobe}", build, recall, lat["qps"], lat["p50_ms"],
                lat["p99_ms"], mb, rss / 1e6,
                notes=f"tuned on held-out vectors: {knob}={choice.nprobe} (R@10 {choice.recall:.3f})",
                extra={"nprobe_curve": {str(k): round(v, 4) for k, v in curve.items()}}))
    gc.collect()
    return rows


def ids_to_pos(found: np.ndarray) -> np.ndarray:
    """Figure ids (position + 1) back to row positions; -1 stays -1."""
    return np.where(found > 0, found - 1, -1)


def bench_hnswlib(
    n: int, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, lat_q: int, threads: int
) -> Row | None:
    """hnswlib, M=16, ef_construction=200, ef swept to the target."""
    try:
        import hnswlib
    except ImportError:
        return None
    rss0 = rss_bytes()
    t = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=xb.shape[1])
    index.init_index(max_elements=n, M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, random_seed=100)
    index.add_items(xb, np.arange(n), num_threads=threads)
    build = time.perf_counter() - t
    rss = rss_bytes() - rss0

    def evaluate(ef: int) -> float:
        index.set_ef(max(ef, K))
        found, _ = index.knn_query(xq, k=K, num_threads=threads)
        return recall_at(found.astype(np.int64), truth)

    ef, recall, curve = _sweep(evaluate, EF_SWEEP)
    index.set_ef(max(ef, K))
    index.set_num_threads(1)
    lat = single_query_latency(lambda q: index.knn_query(q, k=K, num_threads=1), xq[:lat_q])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.bin"
        index.save_index(str(path))
        mb = path.stat().st_size / 1e6
    row = Row(n, "hnswlib", f"M={HNSW_M} efC={HNSW_EF_CONSTRUCTION} ef={ef}", build, recall, lat["qps"],
              lat["p50_ms"], lat["p99_ms"], mb, rss / 1e6,
              extra={"ef_curve": {str(k): round(v, 4) for k, v in curve.items()}})
    gc.collect()
    return row


def bench_chroma(
    n: int, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, lat_q: int, threads: int
) -> Row | None:
    """chromadb (in-process PersistentClient in a temporary folder), space=ip, HNSW defaults (M=16,
    ef_construction=100) except ef_search, swept. A changed ef_search only takes effect when the
    collection is opened again (chromadb 1.5 keeps the loaded index's value), so each sweep step
    re-opens the client."""
    try:
        import chromadb
        from chromadb.api.client import SharedSystemClient
    except ImportError:
        return None
    settings = chromadb.Settings(anonymized_telemetry=False)
    name = f"bench{n}"
    with tempfile.TemporaryDirectory(prefix="bench-chroma-") as tmp:
        rss0 = rss_bytes()
        t = time.perf_counter()
        client = chromadb.PersistentClient(path=tmp, settings=settings)
        coll = client.create_collection(
            name=name, embedding_function=None, configuration={"hnsw": {"space": "ip", "num_threads": threads}}
        )
        batch = min(client.get_max_batch_size(), 20_000)
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            coll.add(ids=[str(i) for i in range(start, stop)], embeddings=xb[start:stop])
        coll.query(query_embeddings=xq[:1], n_results=K, include=[])  # the index is complete and loaded
        build = time.perf_counter() - t
        rss = rss_bytes() - rss0

        def query(q: np.ndarray) -> np.ndarray:
            res = coll.query(query_embeddings=q, n_results=K, include=[])
            return np.array([[int(x) for x in row] for row in res["ids"]], dtype=np.int64)

        def reopen(ef: int) -> None:
            nonlocal client, coll
            coll.modify(configuration={"hnsw": {"ef_search": max(ef, K)}})
            SharedSystemClient.clear_system_cache()
            client = chromadb.PersistentClient(path=tmp, settings=settings)
            coll = client.get_collection(name)

        def evaluate(ef: int) -> float:
            reopen(ef)
            found = np.concatenate([query(xq[i : i + 100]) for i in range(0, xq.shape[0], 100)])
            return recall_at(found, truth)

        ef, recall, curve = _sweep(evaluate, EF_SWEEP)
        reopen(ef)
        lat = single_query_latency(query, xq[:lat_q])
        disk = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 1e6
        row = Row(n, "chromadb", f"M=16 efC=100 ef_search={ef}", build, recall, lat["qps"], lat["p50_ms"],
                  lat["p99_ms"], disk, rss / 1e6, notes="index MB: its folder on disk",
                  extra={"ef_curve": {str(k): round(v, 4) for k, v in curve.items()}})
        SharedSystemClient.clear_system_cache()
    gc.collect()
    return row


def run(
    sizes: list[int],
    *,
    queries: int = 1000,
    latency_queries: int = 1000,
    threads: int = 2,
    alternatives: tuple[str, ...] = ("hnswlib", "chromadb"),
    chroma_max: int = 10_000_000,
    structures: tuple[str, ...] = ("ivf", "hnsw"),
    spec: MixtureSpec | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the search stage for every size; returns ``{"rows": [...], "data": {...}}``."""
    spec = spec or MixtureSpec()
    rows: list[Row] = []
    data: dict[str, Any] = {"generator": spec.as_dict(), "k": K, "target_recall": TARGET, "per_size": {}}
    for n in sizes:
        faiss.omp_set_num_threads(threads)
        t = time.perf_counter()
        xb = embedding_mixture(n, spec)
        xq, _ = queries_near(xb, queries, spec)
        ids = np.arange(n, dtype=np.int64) + 1
        scores, truth = exact_truth(xb, xq, K)
        stats = describe(xb, xq, scores)
        data["per_size"][str(n)] = {**stats, "generate_s": round(time.perf_counter() - t, 1)}
        log(f"search n={n}: data ready in {time.perf_counter() - t:.1f}s {stats}")
        lat_exact = min(latency_queries, max(50, 50_000_000 // n))  # exact is slow: fewer queries at 1M
        rows.append(bench_exact(n, xb, ids, xq, truth, lat_exact))
        log(f"  {_line(rows[-1])}")
        for structure in structures:
            for row in bench_ours(n, xb, ids, xq, truth, latency_queries, threads, structure):
                rows.append(row)
                log(f"  {_line(row)}")
        if "hnswlib" in alternatives:
            faiss.omp_set_num_threads(threads)
            row_h = bench_hnswlib(n, xb, xq, truth, latency_queries, threads)
            if row_h is not None:
                rows.append(row_h)
                log(f"  {_line(row_h)}")
        if "chromadb" in alternatives and n <= chroma_max:
            row_c = bench_chroma(n, xb, xq, truth, min(latency_queries, 500), threads)
            if row_c is not None:
                rows.append(row_c)
                log(f"  {_line(row_c)}")
        del xb, xq, truth
        gc.collect()
    faiss.omp_set_num_threads(threads)
    data["rows"] = [r.__dict__ for r in rows]
    return data


def _line(r: Row) -> str:
    return (f"{r.index} [{r.params}]: build {r.build_s:.1f}s R@10 {r.recall:.3f} {r.qps:.0f} q/s "
            f"p50 {r.p50_ms:.2f}ms p99 {r.p99_ms:.2f}ms rss+{r.rss_mb:.0f}MB")


def tables(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The stage's tables: one row per index and size, then the target check per size."""
    from bench.report import fmt, verdict

    rows = result.get("rows", [])
    header = ["vectors", "index", "parameters", "Recall@10", "q/s (1 thread)", "p50 ms", "p99 ms", "build s",
              "index MB", "RSS +MB"]
    body = [[fmt(r["size"]), r["index"], r["params"], f"{r['recall']:.3f}", fmt(r["qps"]), f"{r['p50_ms']:.2f}",
             f"{r['p99_ms']:.2f}", fmt(r["build_s"]), fmt(r["index_mb"]), fmt(r["rss_mb"])] for r in rows]
    checks = []
    for size in sorted({r["size"] for r in rows}):
        at = [r for r in rows if r["size"] == size]
        ours = [r for r in at if r["index"].startswith("ours") and r["recall"] >= TARGET]
        best = max(ours, key=lambda r: r["qps"]) if ours else None
        others = {r["index"]: r["qps"] for r in at if r["index"] in ("hnswlib", "chromadb") and r["recall"] >= TARGET}
        qps = best["qps"] if best else 0.0
        ahead = all(qps > v for v in others.values()) if others else None
        mine = "none at target"
        if best:
            mine = f"{fmt(qps)} q/s ({best['index'].removeprefix('ours: ')}, {best['params']})"
        checks.append([fmt(size), f">= 1,000 q/s at R@10 >= {TARGET}", mine,
                       verdict(qps >= 1000) if size >= 1_000_000 else f"({verdict(qps >= 1000)})",
                       ", ".join(f"{k} {fmt(v)}" for k, v in others.items()) if others else "-",
                       verdict(ahead)])
    gen = result.get("generator", {})
    data = "; ".join(f"{n}: {s}" for n, s in result.get("per_size", {}).items())
    caption = (f"Search core (dim {gen.get('dim', 512)}, {gen.get('centers')} clusters, data: {data})")
    return [
        (caption, header, body),
        ("Search core targets (checked at 1M; smaller sizes in brackets)",
         ["vectors", "target", "ours (best at target)", "met?", "alternatives at target", "ahead?"], checks),
    ]


PROFILES = {
    # neighbour cosines like CLIP embeddings (random pair ~0.3, 10th neighbour ~0.8)
    "realistic": MixtureSpec(),
    # diffuse, overlapping clusters: the 10th neighbour at cosine ~0.6, hard for IVF partitions
    "hard": MixtureSpec(shift=0.6, spread=0.9),
}


def run_stage(args: Any, log: Callable[..., None] = print) -> dict[str, Any]:
    """The CLI entry: sizes from ``--sizes`` (default 100k,1M; ``--quick``: 20k)."""
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    else:
        sizes = [20_000] if args.quick else [100_000, 1_000_000]
    alternatives = tuple(a for a in args.alternatives.split(",") if a)
    result = run(
        sizes,
        queries=300 if args.quick else 1000,
        latency_queries=200 if args.quick else 1000,
        threads=args.threads,
        alternatives=alternatives,
        chroma_max=args.chroma_max,
        spec=PROFILES[args.profile],
        log=log,
    )
    result["profile"] = args.profile
    return result
