"""``python -m bench.profile_search``: where a text query's time goes inside the service.

Builds a data home of ``--figures`` synthetic figures (real radiology captions; an image index of
the chosen random-init encoder, published by the indexer), creates the real app in this process
and sends ``--requests`` distinct ``GET /api/search`` queries straight into its ASGI interface (no
sockets: what is measured is the service, not an HTTP client). Every thread is profiled with
yappi (wall clock; the sync route runs in the thread pool, which pyinstrument does not follow) and
the functions with the most inclusive time are printed, plus the medians of the ``Server-Timing``
phases. ``--warm`` answers every query once first, so the profile shows the path without the
encoder (cache hits): the service overhead the benchmark's target is about.

    python -m bench.profile_search --model biomedclip-base --mode hybrid --requests 200
    python -m bench.profile_search --mode dense --warm --top 40
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from indexer.vocabulary import SearchMode

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m bench.profile_search", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="biomedclip-tiny", choices=("biomedclip-tiny", "biomedclip-base"))
    ap.add_argument("--mode", default=SearchMode.HYBRID, type=SearchMode, choices=list(SearchMode))
    ap.add_argument("--figures", type=int, default=20_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warm", action="store_true", help="answer each query once first (encoder cache hits)")
    ap.add_argument("--top", type=int, default=30, help="functions to print")
    ap.add_argument("--models-dir", type=Path, default=Path("/work/runs/bench-models"))
    ap.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    return ap.parse_args(argv)


async def _call(app: Any, query: str, mode: str) -> dict[str, float]:
    """One GET /api/search through the ASGI interface; the Server-Timing phases (ms)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/api/search", "raw_path": b"/api/search",
             "query_string": urlencode({"q": query, "k": 10, "mode": mode}).encode(),
             "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "root_path": "", "app": app}
    phases: dict[str, float] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            if message["status"] != 200:
                raise RuntimeError(f"search answered {message['status']}")
            for name, value in message["headers"]:
                if name == b"server-timing":
                    phases.update({k: float(v) for k, v in re.findall(r"([\w-]+);dur=([\d.]+)", value.decode())})

    await app(scope, receive, send)
    return phases


def main(argv: list[str] | None = None) -> None:
    """Build, serve in-process, profile, print."""
    import yappi

    from app.config import Settings
    from app.main import create_app
    from bench.datahome import open_catalogue, populate, publish_vectors, query_texts, vectors
    from bench.models import ensure_model
    from training.encoders import load_encoder

    args = parse_args(argv)
    model_dir = ensure_model(args.model, args.models_dir)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        home = Path(tmp) / "home"
        factory = open_catalogue(home)
        ids = populate(factory, args.figures, query_texts(args.shared_data, 2000, seed=5))
        enc = load_encoder(f"local-dir:{model_dir}", "cpu")
        publish_vectors(factory, home / "indexes", enc.model_id, ids, vectors(args.figures, enc.dim))
        del enc
        settings = Settings(data_home=home, model=f"local-dir:{model_dir}", device="cpu",  # type: ignore[call-arg]
                            run_worker=False, index_poll_s=3600.0)
        app = create_app(settings)
        queries = query_texts(args.shared_data, args.requests + 10, seed=13)[10:]

        async def run() -> list[dict[str, float]]:
            async with app.router.lifespan_context(app):
                for q in query_texts(args.shared_data, 10, seed=14):
                    await _call(app, q, args.mode)
                if args.warm:
                    for q in queries:
                        await _call(app, q, args.mode)
                yappi.set_clock_type("wall")
                yappi.start()
                out = []
                start = time.perf_counter()
                for q in queries:
                    out.append(await _call(app, q, args.mode))
                yappi.stop()
                print(f"{len(queries)} queries in {time.perf_counter() - start:.2f}s (profiled)")
                return out

        records = asyncio.run(run())
    phases = ("app", "encode", "index_search", "db")
    med = {name: statistics.median(r.get(name, 0.0) for r in records) for name in phases}
    rest = statistics.median(r["app"] - r.get("encode", 0) - r.get("index_search", 0) for r in records)
    print(f"Server-Timing medians (ms, under the profiler): {', '.join(f'{k} {v:.2f}' for k, v in med.items())}; "
          f"app - encode - index search {rest:.2f}")
    stats = yappi.get_func_stats()
    stats.sort("ttot", "desc")
    print(f"{'function':<100} {'calls':>7} {'incl ms/query':>14}")
    for row in list(stats)[: args.top]:
        name = f"{Path(row.module).name}:{row.lineno} {row.name}"
        print(f"{name[-100:]:<100} {row.ncall:>7} {row.ttot / len(records) * 1e3:>14.3f}")


if __name__ == "__main__":
    main()
