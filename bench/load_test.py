"""Load test: N concurrent clients for T seconds against the search service, with re-indexing.

Without ``--url`` the script builds a data home (or reuses ``--data-home``):

1. an encoder: ``--model SPEC``, else an export already in ``<data_home>/models``, else a
   ``biomedclip-tiny`` built offline (MiniLM text tower, untrained ResNet-18 image tower) and
   exported there: real model code and real compute per query, no training needed;
2. a corpus: the shared article packages (``../shared/data/jats/packages``) or, without them,
   synthetic PMC-style packages; all but a few are ingested, embedded and indexed now, the rest are
   held back for re-indexing during the load;

then starts ``biomedsearch serve`` (with its in-process worker) on a free port on 127.0.0.1 and
waits for ``/readyz``. With ``--url`` it drives that server (re-indexing needs ``--api-key`` and
``--package`` files).

The load: ``--clients`` asyncio clients each send requests back to back for ``--duration``
seconds: text queries (``GET /api/search`` with varied words, so the embedding cache sees hits and
misses) and image queries (``POST /api/search/image``, both modes, with stored figure images).
Meanwhile the held-back packages are uploaded one after another (``POST /api/articles``) and each
job is followed to ``done``. Every non-2xx answer, transport error, timeout or failed job counts
as an error. Prints requests, errors, throughput and latency percentiles per kind; exits 1 when
anything failed.

    python -m bench.load_test                       # 50 clients x 60 s (``make load-test``)
    python -m bench.load_test --clients 20 --duration 20
    python -m bench.load_test --url http://127.0.0.1:8000 --api-key KEY --package x.tar.gz
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SHARED_PACKAGES = REPO.parent / "shared" / "data" / "jats" / "packages"
HOLD_BACK = 3  # packages kept for re-indexing during the load
WORDS = tuple(
    " ".join(
        (
            "chest CT lung nodule brain MRI tumour western blot protein survival curve kaplan meier",
            "confocal microscopy neuron phylogenetic tree histology staining mouse cell culture gene",
            "expression heatmap ultrasound fracture x-ray liver kidney cardiac echocardiogram flow cytometry",
        )
    ).split(" ")
)


# --- building a data home ------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[load-test] {msg}", file=sys.stderr, flush=True)


def synthetic_packages(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` small PMC-style packages (JATS XML + 2-3 JPEG figures each) under ``folder``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        pmcid = 900000 + i
        figs, members = [], []
        for j in range(1, 2 + i % 3):
            cap = " ".join(rng.choice(WORDS, 8))
            figs.append(f'<fig id="f{j}"><label>Figure {j}</label><caption><p>{cap}.</p></caption>'
                        f'<graphic xlink:href="g{j}"/></fig>')  # fmt: skip
            img = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((256, 192))
            buf = io.BytesIO()
            img.save(buf, "JPEG")
            members.append((f"PMC{pmcid}/g{j}.jpg", buf.getvalue()))
        xml = (
            '<?xml version="1.0"?><article xmlns:xlink="http://www.w3.org/1999/xlink"><front>'
            f'<article-meta><article-id pub-id-type="pmc">{pmcid}</article-id><title-group>'
            f"<article-title>Synthetic article {pmcid}</article-title></title-group></article-meta>"
            f"</front><body>{''.join(figs)}</body></article>"
        ).encode()
        members.insert(0, (f"PMC{pmcid}/a.nxml", xml))
        path = folder / f"PMC{pmcid}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        out.append(path)
    return out


def ensure_encoder(data_home: Path, model: str | None) -> str:
    """The encoder spec to serve with: ``model``, an existing export, or a fresh tiny export."""
    if model:
        return model
    exports = sorted(p.parent for p in (data_home / "models").glob("*/open_clip_config.json"))
    if exports:
        return f"local-dir:{exports[-1]}"
    from training.export import export_model
    from training.model_factory import build_model, load_config

    _log("exporting an untrained biomedclip-tiny encoder (no training: the load is what is measured)")
    built = build_model(load_config("biomedclip-tiny"))
    out = export_model(built, data_home / "models" / "load-test-tiny", extra={"note": "untrained, load test"})
    return f"local-dir:{out}"


def build_home(data_home: Path, model: str | None) -> tuple[str, list[Path]]:
    """Encoder + catalogue + indexes in ``data_home``; returns (model spec, packages held back)."""
    from app.config import Settings
    from app.reindex import catalogue, reindex_options
    from indexer.catalogue import open_database
    from indexer.pipeline import Encoders, reindex
    from training.encoders import load_encoder

    data_home.mkdir(parents=True, exist_ok=True)
    spec = ensure_encoder(data_home, model)
    if SHARED_PACKAGES.is_dir() and len(list(SHARED_PACKAGES.glob("*.tar.gz"))) > HOLD_BACK:
        packages = sorted(SHARED_PACKAGES.glob("*.tar.gz"))
    else:
        packages = synthetic_packages(data_home.parent / f"{data_home.name}-packages", 12)
    now, later = packages[:-HOLD_BACK], packages[-HOLD_BACK:]
    settings = Settings(_env_file=None, data_home=data_home, model=spec, device="cpu")  # type: ignore[call-arg]
    with open_database(settings.resolved_database_url) as db:
        encoder = load_encoder(spec, device="cpu")
        # the same pipeline as a re-index job, built in one publication (no caption channel)
        options = reindex_options(settings, batch_size=32, publish_images_first=False, progress=False)
        report = reindex(now, catalogue(settings, db.session_factory), Encoders(lambda: encoder), options)
    for line in report.summaries():
        _log(line)
    return spec, later


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_home: Path, spec: str, api_key: str, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    """``biomedsearch serve`` on a free local port; returns (process, base URL) once ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOMEDSEARCH_")}
    env.update(
        BIOMEDSEARCH_API_KEY=api_key,
        BIOMEDSEARCH_DEVICE="cpu",
        BIOMEDSEARCH_MODEL=spec,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    exe = Path(sys.executable).with_name("biomedsearch")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "app.cli"]
    cmd += ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-home", str(data_home),
            "--log-level", "warning"]  # fmt: skip
    log = open(data_home / "load-test-server.log", "ab")  # noqa: SIM115 (kept open for the child)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=data_home, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {data_home / 'load-test-server.log'}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not become ready within 300 s")


# --- the load ----------------------------------------------------------------------------------------


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    samples: list[str] = field(default_factory=list)
    jobs_done: int = 0
    jobs_failed: int = 0

    def error(self, kind: str, what: str) -> None:
        self.errors[kind] += 1
        if len(self.samples) < 10:
            self.samples.append(f"{kind}: {what[:300]}")


def _query(rng: random.Random) -> str:
    if rng.random() < 0.3:  # a popular query (served from the embedding cache after the first)
        return rng.choice(("chest CT", "western blot", "brain MRI", "survival curve"))
    return " ".join(rng.sample(WORDS, rng.randint(1, 4)))


async def client_loop(
    http: httpx.AsyncClient, base: str, images: list[bytes], stop_at: float, res: Results, seed: int
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop_at:
        roll = rng.random()
        started = time.perf_counter()
        try:
            if roll < 0.75 or not images:
                kind = "text"
                resp = await http.get(f"{base}/api/search", params={"q": _query(rng), "k": rng.choice((10, 20))})
            else:
                kind = "image"
                mode = rng.choice(("text", "image"))
                files = {"file": ("q.jpg", rng.choice(images), "image/jpeg")}
                resp = await http.post(f"{base}/api/search/image", files=files, data={"mode": mode, "k": "10"})
        except httpx.HTTPError as exc:
            res.error(kind, f"{type(exc).__name__}: {exc}")
            continue
        elapsed = time.perf_counter() - started
        if resp.status_code != 200:
            res.error(kind, f"{resp.status_code} {resp.text}")
        else:
            res.latencies[kind].append(elapsed)


async def reindex_loop(
    http: httpx.AsyncClient, base: str, api_key: str, packages: list[Path], stop_at: float, res: Results
) -> None:
    """Upload the held-back packages one after another; follow each job to its end."""
    for pkg in packages:
        if time.monotonic() >= stop_at:
            return
        try:
            resp = await http.post(
                f"{base}/api/articles",
                files={"file": (pkg.name, pkg.read_bytes(), "application/gzip")},
                headers={"X-API-Key": api_key},
            )
            if resp.status_code != 202:
                res.error("reindex", f"upload {pkg.name}: {resp.status_code} {resp.text}")
                continue
            job_url = base + resp.json()["status_url"]
            give_up = time.monotonic() + 600  # a job started during the load may finish after it
            while True:
                job = (await http.get(job_url)).json()
                if job["state"] in ("done", "failed"):
                    break
                if time.monotonic() > give_up:
                    job["state"] = "failed"
                    job.setdefault("errors", []).append("still running 600 s after its upload")
                    break
                await asyncio.sleep(0.5)
        except httpx.HTTPError as exc:
            res.error("reindex", f"{type(exc).__name__}: {exc}")
            continue
        if job["state"] == "done":
            res.jobs_done += 1
            _log(f"re-index job {job['id']} done ({pkg.name}): {json.dumps(job.get('counts', {}))[:200]}")
        else:
            res.jobs_failed += 1
            res.error("reindex", f"job {job['id']} failed: {job.get('errors')}")


async def run_load(
    base: str, clients: int, duration: float, images: list[bytes], api_key: str | None, packages: list[Path]
) -> tuple[Results, float]:
    res = Results()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as http:
        started = time.monotonic()
        stop_at = started + duration
        tasks = [client_loop(http, base, images, stop_at, res, seed=i) for i in range(clients)]
        if api_key and packages:
            tasks.append(reindex_loop(http, base, api_key, packages, stop_at, res))
        await asyncio.gather(*tasks)
        return res, time.monotonic() - started


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(res: Results, wall: float, clients: int, duration: float) -> int:
    """Print the figures; return the exit status (1 when anything failed)."""
    total = sum(len(v) for v in res.latencies.values())
    errors = sum(res.errors.values())
    print(f"load test: {clients} clients x {duration:.0f} s (wall {wall:.1f} s)")
    heads = ("requests", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms")
    print(f"{'kind':8} " + " ".join(f"{h:>8}" for h in heads))
    rows = {**res.latencies, "all": [x for v in res.latencies.values() for x in v]}
    for kind, lat in rows.items():
        err = errors if kind == "all" else res.errors.get(kind, 0)
        print(
            f"{kind:8} {len(lat):8d} {err:8d} {len(lat) / wall:8.1f} {_pct(lat, .5) * 1e3:8.0f} "
            f"{_pct(lat, .95) * 1e3:8.0f} {_pct(lat, .99) * 1e3:8.0f} {max(lat, default=float('nan')) * 1e3:8.0f}"
        )
    reindex_errors = res.errors.get("reindex", 0)
    print(f"re-index jobs: {res.jobs_done} done, {res.jobs_failed} failed; re-index errors {reindex_errors}")
    for line in res.samples:
        print(f"  error: {line}")
    mean = statistics.fmean(rows["all"]) * 1e3 if rows["all"] else float("nan")
    status = "OK" if errors == 0 and total > 0 else "FAILED"
    print(f"summary: {total} requests, {errors} errors, p50 {_pct(rows['all'], .5) * 1e3:.0f} ms, "
          f"p99 {_pct(rows['all'], .99) * 1e3:.0f} ms, mean {mean:.0f} ms, {res.jobs_done} re-index jobs: {status}")
    return 0 if status == "OK" else 1


def _images(data_home: Path | None, n: int = 12) -> list[bytes]:
    if data_home is not None:
        files = sorted((data_home / "media").rglob("*.jpg"))[:n]
        if files:
            return [f.read_bytes() for f in files]
    from PIL import Image

    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (200, 150), (20 * i % 256, 80, 160)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--url", help="drive this server instead of starting one")
    ap.add_argument("--api-key", help="write key (for re-indexing; generated when the script starts the server)")
    ap.add_argument("--package", type=Path, action="append", default=[], help="package to re-index (with --url)")
    ap.add_argument("--data-home", type=Path, help="data home to build / reuse (default: a temp folder)")
    ap.add_argument("--model", help="encoder spec (default: an export in the data home, else an untrained tiny)")
    ap.add_argument("--server-threads", type=int, default=2, help="torch threads of the started server")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        ap.error("--clients and --duration must be positive")

    server: subprocess.Popen[bytes] | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    try:
        if args.url:
            base, api_key, packages, home = args.url.rstrip("/"), args.api_key, args.package, None
        else:
            if args.data_home is None:
                tmp = tempfile.TemporaryDirectory(prefix="bms-load-")
                home = Path(tmp.name) / "home"
            else:
                home = args.data_home.resolve()
            t0 = time.perf_counter()
            spec, packages = build_home(home, args.model)
            api_key = args.api_key or f"load-{random.randrange(1 << 62):x}"
            server, base = start_server(home, spec, api_key, args.server_threads)
            _log(f"data home {home} ready and serving at {base} in {time.perf_counter() - t0:.0f} s")
        ready = httpx.get(f"{base}/readyz", timeout=30).json()
        _log(f"server ready: {json.dumps(ready)[:300]}")
        res, wall = asyncio.run(run_load(base, args.clients, args.duration, _images(home), api_key, packages))
        return report(res, wall, args.clients, args.duration)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
