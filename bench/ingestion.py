"""Stage ``ingestion``: articles/s and figures/s from packages on disk into a fresh SQLite data home.

Two real inputs, each into its own fresh data home with :func:`indexer.ingest.ingest_paths` (the
code behind ``biomedsearch ingest``): the PMC OA packages in ``shared/data/jats/packages``
(``.tar.gz``: safe extraction, JATS parsing, image validation, hashing, thumbnails) and the MedPix
JSONL manifest ``shared/data/medpix/train.jsonl`` (image/caption pairs). A second pass over the
same packages measures the idempotent re-ingest (nothing changed: hashes compared, nothing written).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.datahome import open_catalogue
from indexer.ingest import IngestLimits, ingest_paths


def _one(label: str, path: Path, work: Path | None, log: Any) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=work) as tmp:
        home = Path(tmp)
        factory = open_catalogue(home)
        for attempt in ("first", "again"):
            rep = ingest_paths([path], factory, home, limits=IngestLimits(), progress=False)
            arts = len(rep.articles)
            row = {"input": label, "pass": attempt, "articles": arts, "figures": rep.figures,
                   "images": rep.images_stored, "seconds": round(rep.seconds, 2),
                   "articles_per_s": round(arts / rep.seconds, 2) if rep.seconds else 0.0,
                   "figures_per_s": round(rep.figures / rep.seconds, 2) if rep.seconds else 0.0,
                   "inputs_per_s": round((arts if attempt == "again" else rep.figures) / rep.seconds, 2)
                   if rep.seconds else 0.0, "summary": rep.summary()}
            rows.append(row)
            log(f"  {label} ({attempt}): {rep.summary()}")
    return rows


def run_stage(args: Any, log: Any = print) -> dict[str, Any]:
    """Ingest the shared packages and the MedPix manifest, twice each."""
    shared = args.shared_data
    rows: list[dict[str, Any]] = []
    packages = shared / "jats" / "packages"
    manifest = shared / "medpix" / "train.jsonl"
    if packages.is_dir():
        n = len(list(packages.glob("*.tar.gz")))
        rows += _one(f"PMC OA packages ({n} .tar.gz)", packages, args.work_dir, log)
    if manifest.is_file():
        rows += _one("MedPix JSONL manifest", manifest, args.work_dir, log)
    return {"rows": rows}


def tables(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """One row per input and pass."""
    header = ["input", "pass", "articles", "figures written", "images", "seconds", "articles/s", "figures/s"]
    body = [[r["input"], "fresh" if r["pass"] == "first" else "re-ingest (unchanged)", str(r["articles"]),
             str(r["figures"]), str(r["images"]), f"{r['seconds']:.1f}", f"{r['articles_per_s']:.1f}",
             f"{r['figures_per_s']:.1f}"] for r in result.get("rows", [])]
    return [("Ingestion into a fresh SQLite data home (1 process)", header, body)]
