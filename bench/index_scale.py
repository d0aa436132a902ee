"""Index scale benchmark (not a test): build time, memory, Recall@10 and QPS of the exact and IVF
indexes on clustered unit vectors.

    python bench/index_scale.py --n 100000 --dim 512            # the figures in the issue
    python bench/index_scale.py --n 1000000 --codecs SQ8        # if memory and time allow

Vectors: a Gaussian mixture (``--centers`` means, per-dimension noise ``--spread``), L2-normalised,
like CLIP embeddings. Queries are fresh draws from the same mixture (never indexed). For each IVF
codec, nprobe is tuned exactly as ``indexer.index_update`` does (held-out indexed vectors as
queries, target ``--target``), then Recall@10 against exact search and QPS are measured on the
fresh queries. Memory is the serialised index size and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from indexer.vector_index import AnnSpec, VectorIndex, exact_neighbours, recall_at_k, tune_nprobe


def mixture(n: int, dim: int, centers: int, spread: float, seed: int, means_seed: int = 0) -> np.ndarray:
    """``n`` unit vectors from the mixture whose means come from ``means_seed``."""
    means = np.random.default_rng(means_seed).standard_normal((centers, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        x = means[rng.integers(0, centers, m)] + spread * rng.standard_normal((m, dim), dtype=np.float32)
        out[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def qps(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Queries per second for one batch search, and the ids found."""
    t = time.perf_counter()
    _, ids = index.search(queries, k)
    return queries.shape[0] / (time.perf_counter() - t), ids


def file_mb(index: VectorIndex) -> float:
    """Serialised size in MB."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.faiss"
        index.write(path)
        return path.stat().st_size / 1e6


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def main() -> None:
    """Build, tune and measure; print one row per index."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--centers", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--codecs", default="SQ8,Flat,PQ64")
    ap.add_argument("--threads", type=int, default=0, help="OpenMP threads (0: FAISS default)")
    args = ap.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    k = args.k
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; n={args.n} dim={args.dim} "
          f"centers={args.centers} spread={args.spread} queries={args.queries}")
    t = time.perf_counter()
    xb = mixture(args.n, args.dim, args.centers, args.spread, seed=1)
    xq = mixture(args.queries, args.dim, args.centers, args.spread, seed=2)
    ids = np.arange(args.n, dtype=np.int64) + 1
    print(f"data generated in {time.perf_counter() - t:.1f}s")

    t = time.perf_counter()
    exact = VectorIndex.exact(args.dim)
    exact.add(ids, xb)
    build = time.perf_counter() - t
    rate, truth = qps(exact, xq, k)
    rows = [("IDMap2,Flat (exact)", build, 0.0, "-", 1.0, rate, file_mb(exact))]
    del exact
    print(f"exact: build {build:.2f}s, {rate:.0f} QPS, peak RSS {peak_rss_mb():.0f} MB")

    rng = np.random.default_rng(3)
    pick = rng.choice(args.n, min(500, args.n), replace=False)
    tune_q, exclude = xb[pick], ids[pick]
    tune_truth = exact_neighbours(xb, ids, tune_q, k, exclude)
    for codec in [c for c in args.codecs.split(",") if c]:
        t = time.perf_counter()
        index = VectorIndex.train_ivf(xb, AnnSpec(codec=codec))
        train = time.perf_counter() - t
        t = time.perf_counter()
        index.add(ids, xb)
        add = time.perf_counter() - t
        t = time.perf_counter()
        choice = tune_nprobe(index, [(tune_q, tune_truth, exclude)], k=k, target=args.target)
        tune = time.perf_counter() - t
        rate, found = qps(index, xq, k)
        recall = recall_at_k(found, truth, k)
        name = index.params["factory"]
        rows.append((name, train + add, tune, str(choice.nprobe), recall, rate, file_mb(index)))
        print(
            f"{name}: train {train:.1f}s add {add:.1f}s tune {tune:.1f}s nprobe={choice.nprobe} "
            f"(reached={choice.reached}) fresh Recall@{k}={recall:.3f} {rate:.0f} QPS, "
            f"peak RSS {peak_rss_mb():.0f} MB; curve {choice.curve}"
        )
        del index
    print()
    print(f"| index | build s | tune s | nprobe | Recall@{k} (fresh queries) | QPS (batch {args.queries}) | file MB |")
    print("|---|---|---|---|---|---|---|")
    for name, build, tune, nprobe, recall, rate, mb in rows:
        print(f"| {name} | {build:.1f} | {tune:.1f} | {nprobe} | {recall:.3f} | {rate:.0f} | {mb:.0f} |")
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
