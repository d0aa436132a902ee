"""Stage ``service``: text queries end to end over HTTP on 127.0.0.1, tiny and BiomedCLIP-size encoders.

A data home with ``--figures`` synthetic figures (default 100,000; real radiology captions, 5 per
article) gets an image index per encoder, published with the indexer's API (IVF above 50,000
vectors, nprobe tuned to Recall@10 >= 0.95). The real app runs under uvicorn in a child process;
httpx clients send ``GET /api/search?q=...&k=10`` with distinct queries (3-10 words cut from real
captions: every one is a cache miss, checked on ``/metrics``), first one at a time, then from 4
concurrent clients. Each answer's ``Server-Timing`` header splits the server's time into encode,
index search, catalogue (db) and the rest (routing, validation, response serialisation,
middleware); the client's time beyond the server's is the HTTP round trip on loopback (uvicorn's
parsing, httpx). "Overhead" is everything but encoding and index search, as the client sees it.
Cached latency (the same queries again, answered from the text-embedding LRU cache) is reported
separately, and so is ``mode=dense`` (the CLIP image index alone: BiomedCLIP's own text -> image
query, without the full-text and caption channels of the default ``hybrid``).
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.datahome import open_catalogue, populate, publish_vectors, query_texts, vectors
from bench.models import ensure_model
from bench.server import Server
from indexer.vocabulary import SearchMode

OVERHEAD_TARGET_MS = 3.0
BASE_P50_TARGET_MS = 60.0


def parse_server_timing(header: str) -> dict[str, float]:
    """``encode;dur=1.2, app;dur=3.4`` -> {"encode": 1.2, "app": 3.4} (ms)."""
    out: dict[str, float] = {}
    for name, dur in re.findall(r"([\w-]+);dur=([\d.]+)", header or ""):
        out[name] = out.get(name, 0.0) + float(dur)
    return out


async def _drive(
    url: str, queries: list[str], concurrency: int, mode: str | None = None
) -> tuple[list[dict[str, float]], float]:
    """Send every query (``concurrency`` clients); per request: client ms + server phases; wall s."""
    todo: asyncio.Queue[str] = asyncio.Queue()
    for q in queries:
        todo.put_nowait(q)
    records: list[dict[str, float]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(http: httpx.AsyncClient) -> None:
        while True:
            try:
                q = todo.get_nowait()
            except asyncio.QueueEmpty:
                return
            t = time.perf_counter()
            params: dict[str, Any] = {"q": q, "k": 10}
            if mode:
                params["mode"] = mode
            resp = await http.get("/api/search", params=params)
            ms = (time.perf_counter() - t) * 1e3
            resp.raise_for_status()
            rec = parse_server_timing(resp.headers.get("server-timing", ""))
            rec["client"] = ms
            rec["results"] = float(len(resp.json()["results"]))
            records.append(rec)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return records, wall


def summarise(records: list[dict[str, float]], wall_s: float) -> dict[str, float]:
    """p50/p99 client latency, throughput and the per-phase medians (ms) of one run."""
    def col(name: str) -> np.ndarray:
        return np.array([r.get(name, 0.0) for r in records])

    client, app = col("client"), col("app")
    enc, search, db = col("encode"), col("index_search"), col("db")
    rest = app - enc - search - db
    http = client - app
    overhead = client - enc - search
    out = {
        "requests": float(len(records)),
        "p50_ms": float(np.percentile(client, 50)),
        "p99_ms": float(np.percentile(client, 99)),
        "throughput_qps": float(len(records) / wall_s) if wall_s else 0.0,
        "encode_ms": float(np.median(enc)),
        "index_search_ms": float(np.median(search)),
        "db_ms": float(np.median(db)),
        "rest_ms": float(np.median(rest)),
        "http_ms": float(np.median(http)),
        "overhead_p50_ms": float(np.median(overhead)),
        "server_overhead_p50_ms": float(np.median(app - enc - search)),
        "results_mean": float(col("results").mean()),
    }
    return {k: round(v, 3) for k, v in out.items()}


def _cache_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {m[0]: float(m[1]) for m in re.findall(r'biomedsearch_query_cache_total\{result="(\w+)"\} ([\d.e+]+)', text)}


def bench_model(name: str, model_dir: Path, home: Path, requests: int, log: Any) -> dict[str, Any]:
    """Serve ``home`` with the encoder in ``model_dir``; measure c=1, c=4 and cached runs."""
    settings = {"data_home": str(home), "model": f"local-dir:{model_dir}", "device": "cpu", "run_worker": False,
                "index_poll_s": 3600.0}
    texts = query_texts(Path(__file__).resolve().parent.parent.parent / "shared" / "data", 4 * requests + 20)
    out: dict[str, Any] = {"model": name}
    with Server(settings) as srv:
        out["startup_s"] = round(srv.startup_s, 1)
        warm, texts = texts[:10], texts[10:]
        asyncio.run(_drive(srv.url, warm, 1))
        before = _cache_counts(srv.url)
        for conc, chunk in ((1, texts[:requests]), (4, texts[requests : 2 * requests])):
            recs, wall = asyncio.run(_drive(srv.url, chunk, conc))
            out[f"c{conc}"] = summarise(recs, wall)
            log(f"  {name} c={conc}: {out[f'c{conc}']}")
        recs, wall = asyncio.run(_drive(srv.url, texts[2 * requests : 3 * requests], 1, SearchMode.DENSE))
        out["dense_c1"] = summarise(recs, wall)
        log(f"  {name} dense c=1: {out['dense_c1']}")
        after = _cache_counts(srv.url)
        out["cache_hits_during_uncached_runs"] = after.get("hit", 0) - before.get("hit", 0)
        recs, wall = asyncio.run(_drive(srv.url, texts[:requests], 1))
        out["cached_c1"] = summarise(recs, wall)
        log(f"  {name} cached c=1: {out['cached_c1']}")
    return out


def run_stage(args: Any, log: Any = print) -> dict[str, Any]:
    """Build the data home, publish an index per encoder, and measure both encoders."""
    n = args.figures or (5_000 if args.quick else 100_000)
    requests = 30 if args.quick else 200
    shared = args.shared_data
    models = {name: ensure_model(name, args.models_dir) for name in ("biomedclip-tiny", "biomedclip-base")}
    from training.encoders import load_encoder

    with tempfile.TemporaryDirectory(prefix="bench-service-", dir=args.work_dir) as tmp:
        home = Path(tmp) / "home"
        t = time.perf_counter()
        factory = open_catalogue(home)
        ids = populate(factory, n, [c for c in query_texts(shared, 2000, seed=5)])
        log(f"service: {n} figures in the catalogue in {time.perf_counter() - t:.1f}s")
        result: dict[str, Any] = {"figures": n, "requests": requests, "models": []}
        for name, path in models.items():
            enc = load_encoder(f"local-dir:{path}", "cpu")
            model_id, dim = enc.model_id, enc.dim
            del enc
            t = time.perf_counter()
            params = publish_vectors(factory, home / "indexes", model_id, ids, vectors(n, dim))
            log(f"  {name}: index {params.get('factory')} nprobe={params.get('nprobe', '-')} "
                f"published in {time.perf_counter() - t:.1f}s")
            row = bench_model(name, path, home, requests, log)
            row["index"] = f"{params.get('factory')} nprobe={params.get('nprobe', '-')}"
            row["dim"] = dim
            result["models"].append(row)
    return result


def tables(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Latency table (per encoder and concurrency) and the two target checks."""
    from bench.report import verdict

    header = ["encoder", "run", "p50 ms", "p99 ms", "q/s", "encode", "index search", "db", "serialise+rest",
              "HTTP", "overhead p50 (client - encode - search)"]
    body, checks = [], []
    for m in result.get("models", []):
        for run, label in (("c1", "hybrid, 1 client"), ("c4", "hybrid, 4 clients"),
                           ("cached_c1", "hybrid, 1 client, cached"), ("dense_c1", "dense, 1 client")):
            s = m.get(run)
            if not s:
                continue
            body.append([f"{m['model']} ({m['index']})", label, f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}",
                         f"{s['throughput_qps']:.1f}", f"{s['encode_ms']:.2f}", f"{s['index_search_ms']:.2f}",
                         f"{s['db_ms']:.2f}", f"{s['rest_ms']:.2f}", f"{s['http_ms']:.2f}",
                         f"{s['overhead_p50_ms']:.2f}"])
        for run, mode in (("c1", SearchMode.HYBRID), ("dense_c1", SearchMode.DENSE)):
            c1 = m.get(run, {})
            if not c1:
                continue
            server = c1.get("server_overhead_p50_ms", 1e9)
            checks.append([m["model"], mode, f"service overhead < {OVERHEAD_TARGET_MS:g} ms/query",
                           f"server {server:.2f} ms; as the client sees it {c1.get('overhead_p50_ms', 0):.2f} ms",
                           verdict(server < OVERHEAD_TARGET_MS)])
            if m["model"] == "biomedclip-base":
                checks.append([m["model"], mode, f"text query p50 < {BASE_P50_TARGET_MS:g} ms",
                               f"{c1.get('p50_ms', 0):.1f} ms", verdict(c1.get("p50_ms", 1e9) < BASE_P50_TARGET_MS)])
    cap = (f"Service end to end ({result.get('figures', 0):,} figures, distinct text queries, k=10; "
           "component columns are medians in ms)")
    return [(cap, header, body),
            ("Service targets (1 client; overhead = the server's time beyond encoding and index searches, "
             "the full-text search counted as an index search)", ["encoder", "mode", "target", "measured", "met?"],
             checks)]
