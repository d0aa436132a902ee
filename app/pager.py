"""The pager and joiner: candidates in, one page of catalogue hits out.

1. **Over-fetch for filters.** FAISS knows nothing of years, journals or licenses, so a filtered
   query asks its :data:`CandidateSource` for more candidates than the page needs
   (``max(4 * (offset + k), 50)``), joins them with the catalogue under the filters' SQL
   (:class:`indexer.filters.Filters`), and, while the page is not yet full and the source holds
   more, asks again for four times as many. Unfiltered queries fetch exactly ``offset + k``. The
   worst case (a filter matching almost nothing) scans the whole source, bounded by its size and by
   ``offset + k <= 1000``.
2. **Join and page.** Candidates keep their order; figures no longer in the catalogue (deleted
   after the index version was built) are dropped; ranks are 1-based across pages.
3. **Matched terms.** The lexical channel ranks without them; only the page's lexically matched
   hits get the query's matched words per field (for highlighting).
4. **Facets.** A page that asks for facets fetches at least :data:`FACET_CANDIDATES` candidates on
   its first pass and counts each facet's values over the best ``FACET_CANDIDATES`` of them
   (:func:`indexer.facets.facet_counts`): the query's candidate set, bounded, so the counts cost the
   same at 100k figures as at 1k.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, load_only, sessionmaker

from app.metrics import Metrics, timed
from app.ranking import FusedHit
from indexer.catalogue import Article, Figure
from indexer.facets import FacetValue, facet_counts
from indexer.filters import Filters
from indexer.lexical import match_terms

FACET_CANDIDATES = 250  # facets count over a query's best this many candidates (bench/facets.py)
CATALOGUE_COUNT_TTL_S = 1.0  # lexical answers' `indexed` may lag the catalogue by this much
# The columns a search hit carries (app.schemas.figure_fields / article_ref). The join loads only
# these: the JSON columns (mentions, extra) cost a decode per row and no answer shows them.
HIT_FIGURE_COLUMNS = (
    Figure.id, Figure.article_id, Figure.label, Figure.caption, Figure.caption_title, Figure.fig_id,
    Figure.position, Figure.width, Figure.height, Figure.image_path, Figure.thumb_path, Figure.figure_type,
    Figure.type_confidence, Figure.type_model, Figure.multipanel, Figure.multipanel_evidence,
)
HIT_ARTICLE_COLUMNS = (
    Article.id, Article.pmcid, Article.doi, Article.pmid, Article.title, Article.journal, Article.year, Article.license,
)


@dataclass(frozen=True)
class Candidate:
    """One ranked candidate from a source: a figure id, its score (higher is better) and, for
    fused candidates, why it matched (:class:`app.ranking.FusedHit`)."""

    figure_id: int
    score: float
    match: FusedHit | None = None


CandidateSource = Callable[[int], list[Candidate]]
"""Given ``n``, the best ``n`` candidates (fewer when the source holds fewer), best first."""


@dataclass(frozen=True)
class Hit:
    """A joined result: rank (1-based), score, the figure and its article, and (hybrid and lexical
    modes) why it matched."""

    rank: int
    score: float
    figure: Figure
    article: Article
    match: FusedHit | None = None


@dataclass(frozen=True)
class Page:
    """One page of hits plus what was searched (``mode`` and the ``channels`` that took part) and,
    when asked for, the facet counts over the ``facet_candidates`` best candidates."""

    hits: list[Hit]
    indexed: int
    index_version: int | None
    mode: str = "dense"
    channels: tuple[str, ...] = ()
    facets: dict[str, list[FacetValue]] | None = None
    facet_candidates: int = 0


Joined = tuple[float, Figure, Article, FusedHit | None]


class Pager:
    """Pages candidates: over-fetches for filters, joins the catalogue, fills matched terms."""

    def __init__(
        self, session_factory: sessionmaker[Session], metrics: Metrics, facet_candidates: int = FACET_CANDIDATES
    ) -> None:
        self.session_factory = session_factory
        self.metrics = metrics
        self.facet_candidates = facet_candidates
        self._catalogue_count: tuple[float, int] | None = None  # (monotonic time, figures)

    def page(
        self,
        source: CandidateSource,
        k: int,
        offset: int,
        filters: Filters,
        *,
        total: int,
        indexed: int,
        version: int | None,
        channels: tuple[str, ...] = (),
        mode: str = "dense",
        facets: tuple[str, ...] = (),
    ) -> Page:
        """Fetch candidates from ``source``, filter and join them, and cut the page ``[offset, offset+k)``.

        ``total`` bounds how many candidates the source can give; ``indexed`` and ``version`` are
        what the page reports as searched, ``mode`` and ``channels`` what was asked and used;
        ``facets`` (names from :data:`indexer.filters.FACETS`) are counted over the best
        ``facet_candidates`` (:data:`FACET_CANDIDATES`) candidates.
        """
        need = offset + k
        if total == 0:
            return Page([], indexed, version, mode, channels, {f: [] for f in facets} if facets else None)
        n = need if filters.empty else max(4 * need, 50)
        n = min(max(n, self.facet_candidates) if facets else n, total)
        first: list[Candidate] | None = None
        while True:
            candidates = source(n)
            first = candidates if first is None else first
            # unfiltered, the page needs only its first candidates (all of them if some were deleted)
            joined = self.join(candidates[:need] if filters.empty else candidates, filters)
            if filters.empty and len(joined) < need < len(candidates):
                joined = self.join(candidates, filters)
            if len(joined) >= need or n >= total or len(candidates) < n:
                break
            n = min(total, 4 * n)
        hits = [
            Hit(rank=i + 1, score=score, figure=fig, article=art, match=match)
            for i, (score, fig, art, match) in enumerate(joined[:need])
        ]
        counted = [c.figure_id for c in first[: self.facet_candidates]] if facets else []
        counts = self.facets(counted, filters, facets) if facets else None
        return Page(hits[offset:], indexed, version, mode, channels, counts, len(set(counted)))

    def facets(self, figure_ids: list[int], filters: Filters, facets: tuple[str, ...]) -> dict[str, list[FacetValue]]:
        """Facet counts over the candidates ``figure_ids`` (:func:`indexer.facets.facet_counts`)."""
        with timed(self.metrics.db, "facets"), self.session_factory() as session:
            return facet_counts(session, figure_ids, filters, facets)

    def join(self, candidates: list[Candidate], filters: Filters) -> list[Joined]:
        """Candidates (in order, duplicates dropped) joined with their figure and article rows,
        keeping those that pass ``filters``. The rows are detached and carry only the columns a hit
        shows (:data:`HIT_FIGURE_COLUMNS`, :data:`HIT_ARTICLE_COLUMNS`)."""
        if not candidates:
            return []
        ids = list(dict.fromkeys(c.figure_id for c in candidates))
        stmt = (
            select(Figure, Article)
            .join(Article, Figure.article_id == Article.id)
            .where(Figure.id.in_(ids))
            .options(load_only(*HIT_FIGURE_COLUMNS), load_only(*HIT_ARTICLE_COLUMNS))
        )
        where, params = filters.sql(Article.__tablename__, Figure.__tablename__)
        if where:
            stmt = stmt.where(text(where).bindparams(**params))
        with timed(self.metrics.db, "join"), self.session_factory() as session:
            rows = {fig.id: (fig, art) for fig, art in session.execute(stmt)}
        out: list[Joined] = []
        seen: set[int] = set()
        for c in candidates:
            if c.figure_id in rows and c.figure_id not in seen:
                seen.add(c.figure_id)
                fig, art = rows[c.figure_id]
                out.append((c.score, fig, art, c.match))
        return out

    def with_matched_terms(self, query: str, hits: list[Hit]) -> list[Hit]:
        """``hits`` with the query's matched words filled into each lexically matched hit's ``match``."""
        ids = [h.figure.id for h in hits if h.match is not None and "lexical" in h.match.ranks]
        if not ids:
            return hits
        with timed(self.metrics.index_search, "lexical"), self.session_factory() as session:
            found = match_terms(session, query, ids)
        out: list[Hit] = []
        for hit in hits:
            words = found.get(hit.figure.id)
            if hit.match is not None and words is not None:
                hit = replace(hit, match=replace(hit.match, terms=words[0], where=dict(words[1])))
            out.append(hit)
        return out

    def catalogue_size(self) -> int:
        """Figures in the catalogue (what lexical search covers), counted at most every
        ``CATALOGUE_COUNT_TTL_S`` seconds (a COUNT over 100k figures costs ~2 ms a query)."""
        now = time.monotonic()
        cached = self._catalogue_count
        if cached is not None and now - cached[0] < CATALOGUE_COUNT_TTL_S:
            return cached[1]
        with timed(self.metrics.db, "count"), self.session_factory() as session:
            count = int(session.execute(select(func.count(Figure.id))).scalar_one())
        self._catalogue_count = (now, count)
        return count
