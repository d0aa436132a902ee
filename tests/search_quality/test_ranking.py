"""Weighted reciprocal rank fusion and the benchmark's metrics (pure functions)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from app.ranking import ChannelHit, FusionWeights, fuse, hybrid_search
from app.relevance import Judged, QuerySetError, evaluate, metrics, read_query_set, tune_weights


def _hits(*ids: int, terms: tuple[str, ...] = ()) -> list[ChannelHit]:
    return [ChannelHit(fid, 1.0 / (i + 1), terms, {"caption": terms} if terms else {}) for i, fid in enumerate(ids)]


def test_agreement_between_channels_wins_and_matches_are_reported() -> None:
    results = {"lexical": _hits(1, 2, 3, terms=("kidney",)), "image": _hits(3, 4, 1), "caption": _hits(3, 1, 5)}
    fused = fuse(results, FusionWeights(1.0, 1.0, 1.0, 60))
    assert [h.figure_id for h in fused][:2] == [3, 1]
    top = fused[0]
    assert top.ranks == {"lexical": 3, "image": 1, "caption": 1}
    assert top.channels == ["lexical", "image", "caption"]
    assert top.terms == ("kidney",) and top.where == {"caption": ("kidney",)}
    assert top.score == pytest.approx(1 / 63 + 1 / 61 + 1 / 61)
    assert next(h for h in fused if h.figure_id == 4).terms == ()


def test_a_low_weight_channel_cannot_override_the_others() -> None:
    results = {"lexical": _hits(1, 2), "caption": _hits(1, 2), "image": _hits(9, 8, 7)}
    assert [h.figure_id for h in fuse(results, FusionWeights(1.0, 0.25, 1.0, 60))] == [1, 2, 9, 8, 7]
    assert [h.figure_id for h in fuse(results, FusionWeights(1.0, 0.0, 1.0, 60))] == [1, 2]  # weight 0: off
    assert fuse(results, FusionWeights(0.0, 1.0, 0.0, 60))[0].figure_id == 9


def test_hybrid_search_asks_each_enabled_channel_to_depth() -> None:
    asked: dict[str, int] = {}

    def channel(name: str, ids: list[int]):  # type: ignore[no-untyped-def]
        def search(query: str, n: int) -> list[ChannelHit]:
            asked[name] = n
            return _hits(*ids[:n])

        return search

    out = hybrid_search(
        "q", 2, {"lexical": channel("lexical", [1, 2, 3]), "image": channel("image", [3])}, FusionWeights(1, 0, 1, 60)
    )
    assert asked == {"lexical": 50} and [h.figure_id for h in out] == [1, 2]
    with pytest.raises(ValueError, match="unknown channel"):
        fuse({"bogus": _hits(1)}, FusionWeights())


def test_metrics() -> None:
    rel = frozenset({1, 2})
    assert metrics([1, 2, 3], rel, 10) == (1.0, pytest.approx(1.0), 1.0)
    recall, ndcg, mrr = metrics([3, 1], rel, 10)
    assert recall == 0.5 and mrr == 0.5
    assert ndcg == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert metrics([3, 4], rel, 10) == (0.0, 0.0, 0.0)
    assert metrics([3, 1], rel, 1) == (0.0, 0.0, 0.0)  # the cut-off applies


def test_evaluate_and_tune_prefer_the_informative_channel() -> None:
    queries = [Judged(f"q{i}", frozenset({i})) for i in range(5)]
    results = [{"lexical": _hits(i, 100 + i), "image": _hits(200 + i, 300 + i, i)} for i in range(5)]
    report = evaluate(queries, results, FusionWeights(1.0, 1.0, 1.0, 60))
    assert report.modes["lexical"].ndcg == 1.0 and report.modes["lexical"].mrr == 1.0
    assert report.modes["image"].mrr == pytest.approx(1 / 3)
    assert "caption" not in report.modes  # no such channel in the results
    best, ndcgs = tune_weights([(queries, results)])
    assert ndcgs == [1.0] and best.lexical > best.image


def test_query_files_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"query": "x", "relevant": "nope"}\n')
    with pytest.raises(QuerySetError, match=r"q\.jsonl:1"):
        read_query_set(bad)
    with pytest.raises(QuerySetError, match="cannot read"):
        read_query_set(tmp_path / "missing.jsonl")
