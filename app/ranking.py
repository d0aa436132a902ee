"""Hybrid ranking: weighted reciprocal rank fusion of a lexical and two dense channels.

Channels (each maps a query text and a depth ``n`` to its best ``n`` figures, best first):

- ``lexical``: BM25-style full-text search over caption, mentions, article title and label
  (:func:`indexer.lexical.search_lexical`); its hits carry the matched terms and where they matched;
- ``image``: the query text's CLIP embedding against the image index (text -> image);
- ``caption``: the query text's embedding against a caption index (the CLIP text tower's, or a
  separate sentence encoder's, see :mod:`training.sentence_encoder`).

Fusion (Cormack et al. 2009, weighted): ``score(f) = sum_c w_c / (rrf_k + rank_c(f))`` over the
channels that returned ``f``. Ranks, not raw scores, are fused, so channels with incomparable scales
(BM25, cosine) combine without calibration, and a channel's weight bounds how far it can move a
result: with a low weight a weak channel cannot drag the ranking down. A weight of 0 switches a
channel off. Weights and ``rrf_k`` come from ``Settings`` (``weight_lexical``, ``weight_image``,
``weight_caption``, ``rrf_k``) and are tuned on the relevance benchmark (``biomedsearch eval-search``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from indexer.filters import Filters
from indexer.lexical import search_lexical

CHANNELS: tuple[str, ...] = ("lexical", "image", "caption")


@dataclass(frozen=True)
class ChannelHit:
    """One channel's result: figure id, the channel's own score, and (lexical only) matches."""

    figure_id: int
    score: float
    terms: tuple[str, ...] = ()
    where: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


ChannelSearch = Callable[[str, int], list[ChannelHit]]
"""Given the query text and ``n``, the channel's best ``n`` hits (fewer when it has fewer), best first."""


@dataclass(frozen=True)
class FusionWeights:
    """Per-channel weights and the RRF constant (``rrf_k``: larger flattens the rank discount)."""

    lexical: float = 1.0
    image: float = 0.02
    caption: float = 1.5
    rrf_k: int = 60

    @classmethod
    def from_settings(cls, settings: Settings) -> FusionWeights:
        """The weights configured in ``settings``."""
        return cls(settings.weight_lexical, settings.weight_image, settings.weight_caption, settings.rrf_k)

    def of(self, channel: str) -> float:
        """The weight of ``channel`` (one of :data:`CHANNELS`)."""
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
        return float(getattr(self, channel))


@dataclass(frozen=True)
class FusedHit:
    """A fused result: the figure, its fused score, each matching channel's 1-based rank, and the
    lexical matches (terms, and field -> terms) for highlighting."""

    figure_id: int
    score: float
    ranks: dict[str, int]
    terms: tuple[str, ...] = ()
    where: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def channels(self) -> list[str]:
        """The channels that returned this figure, in :data:`CHANNELS` order."""
        return [c for c in CHANNELS if c in self.ranks]


def fuse(results: Mapping[str, list[ChannelHit]], weights: FusionWeights) -> list[FusedHit]:
    """Weighted reciprocal rank fusion of each channel's ranked hits, best first.

    Channels with weight 0 are ignored. Ties are broken by the number of channels agreeing, then
    by figure id (deterministic). Duplicate ids within a channel keep their best rank.
    """
    scores: dict[int, float] = {}
    ranks: dict[int, dict[str, int]] = {}
    matches: dict[int, ChannelHit] = {}
    for channel, hits in results.items():
        weight = weights.of(channel)
        if weight <= 0:
            continue
        seen: set[int] = set()
        for rank, hit in enumerate(hits, start=1):
            if hit.figure_id in seen:
                continue
            seen.add(hit.figure_id)
            scores[hit.figure_id] = scores.get(hit.figure_id, 0.0) + weight / (weights.rrf_k + rank)
            ranks.setdefault(hit.figure_id, {})[channel] = rank
            if hit.terms:
                matches[hit.figure_id] = hit
    order = sorted(scores, key=lambda fid: (-scores[fid], -len(ranks[fid]), fid))
    out: list[FusedHit] = []
    for fid in order:
        lex = matches.get(fid)
        out.append(
            FusedHit(fid, scores[fid], ranks[fid], lex.terms if lex else (), dict(lex.where) if lex else {})
        )
    return out


def hybrid_search(
    query: str, n: int, channels: Mapping[str, ChannelSearch], weights: FusionWeights, *, depth: int | None = None
) -> list[FusedHit]:
    """Run each channel with a positive weight to ``depth`` (default ``max(n, 50)``) and fuse.

    Returns the best ``n`` :class:`FusedHit`.
    """
    depth = max(n, 50) if depth is None else max(depth, n)
    results = {name: search(query, depth) for name, search in channels.items() if weights.of(name) > 0}
    return fuse(results, weights)[:n]


# --- channel constructors ------------------------------------------------------------------------------


def lexical_channel(session_factory: sessionmaker[Session], filters: Filters | None = None) -> ChannelSearch:
    """The lexical channel over the catalogue (optionally restricted by article filters)."""

    def search(query: str, n: int) -> list[ChannelHit]:
        with session_factory() as session:
            hits = search_lexical(session, query, n, filters)
        return [ChannelHit(h.figure_id, h.score, h.terms, h.where) for h in hits]

    return search


class VectorSearcher(Protocol):
    """What a dense channel needs of ``indexer.publish.LiveIndexes``."""

    def search(self, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [q, k], figure ids [q, k]); id -1 where empty."""
        ...


def dense_channel(encode: Callable[[str], np.ndarray], indexes: VectorSearcher, kind: str) -> ChannelSearch:
    """A dense channel: ``encode(query)`` ([1, dim]) searched in the ``kind`` index of ``indexes``."""

    def search(query: str, n: int) -> list[ChannelHit]:
        vec = np.asarray(encode(query), dtype=np.float32).reshape(1, -1)
        scores, ids = indexes.search(kind, vec, n)
        return [
            ChannelHit(int(fid), float(s))
            for s, fid in zip(np.asarray(scores)[0], np.asarray(ids)[0], strict=False)
            if int(fid) >= 0
        ]

    return search


def describe(hit: FusedHit) -> dict[str, Any]:
    """A JSON-ready account of why ``hit`` matched: channels with ranks, matched terms by field."""
    return {"channels": hit.channels, "ranks": dict(hit.ranks), "terms": list(hit.terms),
            "where": {k: list(v) for k, v in hit.where.items()}}
