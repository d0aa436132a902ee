"""Query sets of the relevance benchmark, generated from the shared data (never copied).

- **MedPix val** (:func:`medpix_queries`): query = a case's diagnosis; relevant = the images of
  the cases with that diagnosis (cases sharing a diagnosis give one query, all their images).
- **JATS articles** (:func:`jats_queries`): query = a figure's caption title; relevant = that
  figure (every graphic of the ``<fig>``).

Judgements use the catalogue keys the ingester gives (``Article.key``, ``Figure.key``; see
``indexer.ingest``), so a query set applies to any catalogue the same files were ingested into.

Run ``python -m tests.search_quality.querysets OUT_DIR [--shared ../shared/data]`` to write
``medpix-val.jsonl`` and ``jats.jsonl`` for ``biomedsearch eval-search --queries``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from app.relevance import write_query_set
from indexer.jats import parse_jats_file


def manifest_article_key(manifest: Path, case_id: str) -> str:
    """The ``Article.key`` the ingester gives a manifest's case (``manifest:<folder>/<stem>#<case>``)."""
    return f"manifest:{manifest.parent.name}/{manifest.stem}#{case_id}"[:300]


def medpix_queries(manifest: Path, *, max_cases: int | None = None) -> list[dict[str, object]]:
    """Diagnosis queries over a MedPix JSONL manifest (its first ``max_cases`` cases, in file order)."""
    by_diagnosis: dict[str, list[dict[str, str]]] = {}
    cases: list[str] = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        case, diagnosis = row.get("case_id"), row.get("diagnosis")
        if not case or not isinstance(diagnosis, str) or not diagnosis.strip():
            continue
        if case not in cases:
            if max_cases is not None and len(cases) >= max_cases:
                continue
            cases.append(case)
        judged = {"article": manifest_article_key(manifest, case), "figure": row["id"]}
        by_diagnosis.setdefault(" ".join(diagnosis.split()), []).append(judged)
    return [{"query": q, "relevant": rel} for q, rel in by_diagnosis.items()]


def jats_queries(article_dirs: list[Path]) -> list[dict[str, object]]:
    """Caption-title queries over article folders (each holding one ``.nxml``)."""
    out: list[dict[str, object]] = []
    for folder in article_dirs:
        for xml in sorted(folder.glob("*.nxml")):
            record = parse_jats_file(xml)
            key = record.key(xml.stem)
            for fig in record.figures:
                title = " ".join((fig.caption_title or "").split())
                if len(title.split()) >= 2:  # a one-word title ("Figure") is not a query
                    out.append({"query": title, "relevant": [{"article": key, "figure": fig.key_base}]})
    return out


def jats_article_dirs(shared: Path) -> list[Path]:
    """The 9 article folders of ``shared/jats`` (not the malformed / xml-only sets)."""
    root = shared / "jats"
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in {"malformed", "xml-only", "packages"})


def medpix_subset(shared: Path, dest: Path, *, max_cases: int) -> Path:
    """Copy the first ``max_cases`` cases of MedPix val (lines and images) to ``dest/val.jsonl``
    so that it ingests like the original (image paths relative to the manifest)."""
    src = shared / "medpix" / "val.jsonl"
    (dest / "images").mkdir(parents=True, exist_ok=True)
    kept: list[str] = []
    cases: list[str] = []
    for line in src.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["case_id"] not in cases:
            if len(cases) >= max_cases:
                continue
            cases.append(row["case_id"])
        shutil.copyfile(src.parent / row["image"], dest / row["image"])
        kept.append(line)
    out = dest / "val.jsonl"
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return out


def _all(shared: Path) -> Iterator[tuple[str, list[dict[str, object]]]]:
    yield "medpix-val.jsonl", medpix_queries(shared / "medpix" / "val.jsonl")
    yield "jats.jsonl", jats_queries(jats_article_dirs(shared))


def main() -> None:
    """Write both query sets into OUT_DIR."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    args = parser.parse_args()
    for name, queries in _all(args.shared):
        count = write_query_set(args.out_dir / name, queries)
        print(f"wrote {count} queries to {args.out_dir / name}")


if __name__ == "__main__":
    main()
