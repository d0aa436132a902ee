"""Stage ``freshness``: 1,000 new figures uploaded through the API, timed until search finds them.

The service (tiny encoder, in-process re-index worker, default settings otherwise) runs over a data
home that already holds ``--figures`` figures (default 20,000) with stored embeddings and published
indexes (published by the re-index pipeline's publish stages). One PMC-style package (``.tar.gz``: a JATS article
with 1,000 ``<fig>`` elements and their JPEGs, real MedPix images and captions) is sent to
``POST /api/articles``. From the 202 answer, the clock runs until (a) ``/readyz`` counts the new
image vectors in the live index, (b) an image query (``POST /api/search/image``, mode=image)
with one of the uploaded images returns that new figure first (the target: from here text and
image queries find the new figures), and (c) the job is done (caption vectors and the caption
channel published too). The job's own seconds per stage come from ``GET /api/jobs/{id}``.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import httpx
import numpy as np
from PIL import Image

from bench.datahome import open_catalogue, populate, query_texts, store_embeddings, vectors
from bench.models import ensure_model
from bench.server import Server
from indexer.pipeline import Catalogue, Encoders, ReindexOptions, reindex
from indexer.vocabulary import Stage

TARGET_S = 10.0
API_KEY = "bench-key"


def _medpix(shared: Path, n: int) -> list[tuple[bytes, str]]:
    """``n`` (JPEG bytes, caption) pairs from MedPix (cycled, each image made distinct if reused)."""
    manifest = shared / "medpix" / "train.jsonl"
    pairs: list[tuple[bytes, str]] = []
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            path = manifest.parent / rec["image"]
            if path.is_file():
                pairs.append((path.read_bytes(), rec.get("caption") or rec["id"]))
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        if i < len(pairs):
            out.append(pairs[i])
            continue
        img = Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, "JPEG")
        out.append((buf.getvalue(), f"Synthetic figure {i}"))
    return out


def make_package(folder: Path, pairs: list[tuple[bytes, str]], name: str = "bench-fresh") -> Path:
    """A PMC OA-style package ``name.tar.gz``: ``name/name.nxml`` with one fig per pair, plus JPEGs."""
    figs = "".join(
        f'<fig id="F{i}"><label>Figure {i + 1}</label><caption><p>{escape(cap)}</p></caption>'
        f'<graphic xlink:href="{name}.g{i:04d}"/></fig>'
        for i, (_, cap) in enumerate(pairs)
    )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<article xmlns:xlink="http://www.w3.org/1999/xlink" article-type="research-article">'
        "<front><journal-meta><journal-title-group><journal-title>Bench Journal</journal-title>"
        "</journal-title-group></journal-meta><article-meta>"
        f'<article-id pub-id-type="pmc">PMC{int(time.time())}</article-id>'
        "<title-group><article-title>Freshness benchmark article</article-title></title-group>"
        "<pub-date><year>2026</year></pub-date></article-meta></front>"
        f"<body><sec><title>Figures</title>{figs}</sec></body></article>"
    ).encode()
    path = folder / f"{name}.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        def add(member: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"{name}/{member}")
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))

        add(f"{name}.nxml", xml)
        for i, (data, _) in enumerate(pairs):
            add(f"{name}.g{i:04d}.jpg", data)
    return path


def run_stage(args: Any, log: Any = print) -> dict[str, Any]:
    """Base data home -> serve -> upload 1,000 figures -> time until searchable."""
    from training.encoders import load_encoder

    n_base = args.figures or (2_000 if args.quick else 20_000)
    n_new = 200 if args.quick else 1000
    model_dir = ensure_model("biomedclip-tiny", args.models_dir)
    enc = load_encoder(f"local-dir:{model_dir}", "cpu")
    model_id, dim = enc.model_id, enc.dim
    with tempfile.TemporaryDirectory(prefix="bench-fresh-", dir=args.work_dir) as tmp:
        home = Path(tmp) / "home"
        factory = open_catalogue(home)
        t = time.perf_counter()
        ids = populate(factory, n_base, query_texts(args.shared_data, 2000, seed=3))
        store_embeddings(factory, model_id, ids, vectors(n_base, dim, seed=1), "image")
        store_embeddings(factory, model_id, ids, vectors(n_base, dim, seed=2), "caption")
        # the default hybrid caption channel (MiniLM) is in step with the base too, as in service:
        # a job then encodes only the new figures' captions with it
        from training.sentence_encoder import MINILM_MODEL_ID, load_sentence_encoder

        store_embeddings(factory, MINILM_MODEL_ID, ids, vectors(n_base, 384, seed=4), "caption")
        # the pipeline's publish stages over those stored vectors (no ingestion, nothing to encode):
        # the CLIP indexes, then the caption channel's
        base = reindex(
            None,
            Catalogue(factory, home, home / "indexes"),
            Encoders(lambda clip=enc: clip, lambda: load_sentence_encoder("minilm", device="cpu")),
            ReindexOptions(publish_images_first=False, skip=frozenset({Stage.EMBED}), progress=False),
        )
        del enc
        log(f"freshness: base of {n_base} figures ready in {time.perf_counter() - t:.1f}s: "
            f"{base.publications[0].summary()}")
        package = make_package(Path(tmp), _medpix(args.shared_data, n_new))
        settings = {"data_home": str(home), "model": f"local-dir:{model_dir}", "device": "cpu",
                    "run_worker": True, "api_key": API_KEY}
        with Server(settings) as srv, httpx.Client(base_url=srv.url, timeout=120) as http:
            before = http.get("/readyz").json()["indexes"]["image"]
            probe = _medpix(args.shared_data, n_new)[n_new - 1][0]
            t_send = time.perf_counter()
            with open(package, "rb") as fh:
                resp = http.post("/api/articles", files={"file": (package.name, fh, "application/gzip")},
                                 headers={"X-API-Key": API_KEY})
            resp.raise_for_status()
            t0 = time.perf_counter()
            job_id = resp.json()["job_id"]
            counted = found = None
            job: dict[str, Any] = {}
            while time.perf_counter() - t0 < 600:
                now = time.perf_counter() - t0
                if counted is None and http.get("/readyz").json()["indexes"]["image"] >= before + n_new:
                    counted = now
                if counted is not None:
                    hits = http.post("/api/search/image", files={"file": ("q.jpg", probe, "image/jpeg")},
                                     data={"mode": "image", "k": "1"}).json()["results"]
                    if hits and int(hits[0]["figure"]["id"] if "figure" in hits[0] else hits[0]["id"]) > int(ids[-1]):
                        found = time.perf_counter() - t0
                        break
                time.sleep(0.2)
            complete = None  # the job done: caption vectors and the caption channel published too
            while time.perf_counter() - t0 < 900:
                job = http.get(f"/api/jobs/{job_id}").json()
                if job.get("state") in ("done", "failed"):
                    complete = time.perf_counter() - t0
                    break
                time.sleep(0.2)
    result = {"base_figures": n_base, "new_figures": n_new, "package_mb": round(package.stat().st_size / 1e6, 1)
              if package.exists() else None, "upload_s": round(t0 - t_send, 2),
              "indexed_s": None if counted is None else round(counted, 2),
              "searchable_s": None if found is None else round(found, 2),
              "complete_s": None if complete is None else round(complete, 2), "job": job}
    log(f"  upload {result['upload_s']}s, counted in the index after {result['indexed_s']}s, "
        f"found by search after {result['searchable_s']}s, job {job.get('state')} after {result['complete_s']}s; "
        f"{job.get('counts')}")
    return result


def tables(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """One row: the upload, the time to searchable, the time to fully indexed, the target check."""
    from bench.report import verdict

    s = result.get("searchable_s")
    job = result.get("job", {})
    stages = job.get("counts", {}).get("seconds", {})
    row = [f"{result.get('new_figures', 0):,} figures onto {result.get('base_figures', 0):,}",
           f"{result.get('upload_s')}", f"{result.get('indexed_s')}", f"{s}", f"< {TARGET_S:g} s",
           verdict(None if s is None else s < TARGET_S), f"{result.get('complete_s')}",
           ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) or "-", str(job.get("state", "-"))]
    header = ["upload", "upload s", "in live image index s", "found by search s", "target", "met?",
              "all indexes s (job done)", "job stages s", "job"]
    cap = ("Freshness: POST /api/articles (tiny encoder) until an image query finds a new figure; the job "
           "publishes the image vectors first, then the caption vectors and the caption channel")
    return [(cap, header, [row])]
