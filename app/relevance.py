"""The relevance benchmark: query sets with judgements, ranking metrics, per-mode evaluation.

A query set is a JSONL file, one query per line::

    {"query": "Posterior Cerebral Artery Infarction",
     "relevant": [{"article": "manifest:medpix/val#MPX1007", "figure": "MPX1007_synpic46719"}, ...]}

A judgement names a catalogue article by ``Article.key`` and, optionally, a figure inside it by
``Figure.key`` or by its ``<fig>`` part (``fig1`` matches ``fig1/1`` and ``fig1/2``); without
``figure`` every figure of the article is relevant. Query sets are generated from the shared data
(``tests/search_quality/querysets.py``), never copied into the repository.

Modes: ``lexical``, ``image`` (dense text -> image), ``caption`` (dense text -> caption) and
``hybrid`` (weighted RRF of the three, :mod:`app.ranking`). Metrics at cut-off ``k`` (binary
relevance): Recall@k (relevant found in the top k / relevant), nDCG@k (DCG over the ideal DCG of
min(k, relevant) hits) and MRR (1 / rank of the first relevant hit in the top k, 0 when none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from app.ranking import CHANNELS, ChannelHit, ChannelSearch, FusionWeights, fuse
from indexer.catalogue import Article, Figure
from training.fsio import atomic_file

MODES: tuple[str, ...] = (*CHANNELS, "hybrid")


class QuerySetError(ValueError):
    """A query file that cannot be read or has malformed lines."""


@dataclass(frozen=True)
class Judged:
    """One query and the catalogue figure ids judged relevant to it."""

    query: str
    relevant: frozenset[int]


@dataclass
class ModeScores:
    """Mean metrics of one mode over the evaluated queries."""

    recall: float = 0.0
    ndcg: float = 0.0
    mrr: float = 0.0
    queries: int = 0


@dataclass
class EvalReport:
    """Per-mode scores, the weights hybrid used, and what could not be evaluated."""

    k: int
    weights: FusionWeights
    modes: dict[str, ModeScores] = field(default_factory=dict)
    queries: int = 0
    unresolved: int = 0  # queries none of whose judged figures are in the catalogue

    def summary(self) -> str:
        """One line: queries and each mode's nDCG@k."""
        parts = ", ".join(f"{m} nDCG@{self.k} {s.ndcg:.3f}" for m, s in self.modes.items())
        return f"evaluated {self.queries} queries ({self.unresolved} unresolved): {parts}"


def read_query_set(path: Path) -> list[dict[str, object]]:
    """The raw lines of a query file; raises :class:`QuerySetError` on unreadable or malformed input."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QuerySetError(f"cannot read query file {path}: {exc}") from exc
    out: list[dict[str, object]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise QuerySetError(f"{path}:{number}: not JSON ({exc})") from exc
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("query"), str)
            or not obj["query"].strip()
            or not isinstance(obj.get("relevant"), list)
            or not all(isinstance(r, dict) and isinstance(r.get("article"), str) for r in obj["relevant"])
        ):
            raise QuerySetError(f"{path}:{number}: expected {{'query': str, 'relevant': [{{'article': str, ...}}]}}")
        out.append(obj)
    if not out:
        raise QuerySetError(f"{path}: no queries")
    return out


def write_query_set(path: Path, queries: Iterable[Mapping[str, object]]) -> int:
    """Write queries as JSONL atomically (temp file in the same folder, fsync, replace); returns the count."""
    count = 0
    with atomic_file(Path(path), "w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps(q, ensure_ascii=False) + "\n")
            count += 1
    return count


def resolve(session_factory: sessionmaker[Session], raw: Sequence[Mapping[str, object]]) -> tuple[list[Judged], int]:
    """Map each query's judgements to figure ids; returns (resolved queries, count unresolved)."""
    keys = {str(r["article"]) for q in raw for r in q["relevant"]}  # type: ignore[attr-defined]
    figures: dict[str, list[tuple[int, str]]] = {}
    with session_factory() as session:
        rows = session.execute(
            select(Article.key, Figure.id, Figure.key).join(Figure, Figure.article_id == Article.id)
            .where(Article.key.in_(keys))
        ).all()
    for akey, fid, fkey in rows:
        figures.setdefault(akey, []).append((int(fid), fkey))
    judged: list[Judged] = []
    unresolved = 0
    for q in raw:
        ids: set[int] = set()
        for r in q["relevant"]:  # type: ignore[attr-defined]
            want = r.get("figure")
            for fid, fkey in figures.get(str(r["article"]), []):
                if want is None or fkey == want or fkey.startswith(f"{want}/"):
                    ids.add(fid)
        if ids:
            judged.append(Judged(str(q["query"]), frozenset(ids)))
        else:
            unresolved += 1
    return judged, unresolved


def metrics(ranked: Sequence[int], relevant: frozenset[int], k: int) -> tuple[float, float, float]:
    """(Recall@k, nDCG@k, MRR) of one ranked list of figure ids against the relevant set."""
    top = list(dict.fromkeys(ranked))[:k]
    gains = [1.0 if fid in relevant else 0.0 for fid in top]
    recall = sum(gains) / len(relevant) if relevant else 0.0
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    mrr = next((1.0 / (i + 1) for i, g in enumerate(gains) if g), 0.0)
    return recall, (dcg / ideal if ideal else 0.0), mrr


def run_channels(
    queries: Sequence[Judged], channels: Mapping[str, ChannelSearch], depth: int, *, progress: bool = True
) -> list[dict[str, list[ChannelHit]]]:
    """Each channel's ranked hits (to ``depth``) for every query, in query order."""
    out: list[dict[str, list[ChannelHit]]] = []
    for q in tqdm(queries, desc="queries", unit="q", disable=not progress, leave=False):
        out.append({name: search(q.query, depth) for name, search in channels.items()})
    return out


def evaluate(
    queries: Sequence[Judged],
    results: Sequence[Mapping[str, list[ChannelHit]]],
    weights: FusionWeights,
    *,
    k: int = 10,
    modes: Sequence[str] = MODES,
    unresolved: int = 0,
) -> EvalReport:
    """Score every mode on precomputed channel results (see :func:`run_channels`).

    A single-channel mode ranks by that channel alone; ``hybrid`` fuses the channels present with
    ``weights``. A mode whose channel is absent from ``results`` is left out of the report.
    """
    report = EvalReport(k=k, weights=weights, queries=len(queries), unresolved=unresolved)
    for mode in modes:
        if mode != "hybrid" and (not results or mode not in results[0]):
            continue
        sums = [0.0, 0.0, 0.0]
        for q, res in zip(queries, results, strict=True):
            if mode == "hybrid":
                ranked = [h.figure_id for h in fuse(res, weights)[:k]]
            else:
                ranked = [h.figure_id for h in res[mode][:k]]
            for i, value in enumerate(metrics(ranked, q.relevant, k)):
                sums[i] += value
        n = max(len(queries), 1)
        report.modes[mode] = ModeScores(sums[0] / n, sums[1] / n, sums[2] / n, len(queries))
    return report


WEIGHT_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
RRF_K_GRID: tuple[int, ...] = (10, 30, 60)


def tune_weights(
    query_sets: Sequence[tuple[Sequence[Judged], Sequence[Mapping[str, list[ChannelHit]]]]],
    *,
    k: int = 10,
    objective: Callable[[list[float]], float] | None = None,
) -> tuple[FusionWeights, list[float]]:
    """Grid-search the fusion weights (lexical fixed at 1 unless off, image and caption on
    :data:`WEIGHT_GRID`, ``rrf_k`` on :data:`RRF_K_GRID`) for the best hybrid nDCG@k.

    ``objective`` turns the per-set nDCG list into one number (default: the worst set, so the
    weights must hold on every set). Returns (best weights, their per-set nDCG@k).
    """
    score = objective or min
    best: tuple[float, FusionWeights, list[float]] | None = None
    for lex, img, cap, rk in product((0.0, 1.0), WEIGHT_GRID, WEIGHT_GRID, RRF_K_GRID):
        if lex == img == cap == 0.0:
            continue
        weights = FusionWeights(lex, img, cap, rk)
        ndcgs = [evaluate(q, r, weights, k=k, modes=("hybrid",)).modes["hybrid"].ndcg for q, r in query_sets]
        value = score(ndcgs)
        if best is None or value > best[0] + 1e-12:
            best = (value, weights, ndcgs)
    assert best is not None
    return best[1], best[2]
