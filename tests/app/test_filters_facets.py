"""Figure-type and multi-panel filters in every channel's SQL, and facet counts, on SQLite and
PostgreSQL, checked against a brute-force count in Python over a catalogue with known values."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from app.metrics import Metrics
from app.pager import Candidate, Pager
from indexer.catalogue import Article, Figure, open_database
from indexer.facets import facet_counts
from indexer.filters import FACETS, Filters
from indexer.lexical import search_lexical
from indexer.vocabulary import FigureGroup, FigureType

JOURNALS = ("BMC Medical Imaging", "PLoS ONE", "eLife", None)
LICENSES = ("CC BY 4.0", "CC BY-NC", "CC0", None)
KINDS = (*list(FigureType)[:6], FigureType.CHART, FigureType.HISTOLOGY, None)  # None: not yet labelled


@dataclass(frozen=True)
class Row:
    """What the brute-force count knows of one figure."""

    id: int
    figure_type: str | None
    multipanel: bool | None
    year: int | None
    journal: str | None
    license: str | None
    lesion: bool  # its caption holds the word "lesion"


def passes(row: Row, filters: Filters) -> bool:
    """``filters`` in plain Python: the oracle the SQL of :class:`Filters` is checked against."""
    if filters.year_from is not None and (row.year is None or row.year < filters.year_from):
        return False
    if filters.year_to is not None and (row.year is None or row.year > filters.year_to):
        return False
    if filters.journal and (row.journal or "").lower() != filters.journal.strip().lower():
        return False
    if filters.license and (row.license or "").lower() != filters.license.strip().lower():
        return False
    if filters.types and row.figure_type not in {t.value for t in filters.types}:
        return False
    return filters.multipanel is None or row.multipanel == filters.multipanel


def brute_force(rows: list[Row], filters: Filters, facet: str) -> Counter[object]:
    """Counts of ``facet``'s values among ``rows`` passing ``filters`` less the facet's own filter."""
    attr = "figure_type" if facet == "type" else facet
    keep = filters.without(facet)
    return Counter(getattr(r, attr) for r in rows if passes(r, keep) and getattr(r, attr) is not None)


@pytest.fixture
def catalogue(db_url: str):  # type: ignore[no-untyped-def]
    """120 figures in 30 articles with seeded types, flags, years, journals, licenses and captions."""
    rng = random.Random(7)
    with open_database(db_url) as db:
        rows: list[Row] = []
        with db.session_factory.begin() as s:
            for a in range(30):
                year = rng.choice((2015, 2018, 2021, None))
                journal, license_ = rng.choice(JOURNALS), rng.choice(LICENSES)
                art_id = s.execute(
                    insert(Article).returning(Article.id),
                    {"key": f"test:{a}", "title": f"Article {a}", "journal": journal, "year": year,
                     "license": license_, "content_hash": f"{a:064d}", "extra": {}},
                ).scalar_one()
                for f in range(4):
                    kind = rng.choice(KINDS)
                    multipanel = None if kind is None else rng.random() < 0.4
                    lesion = rng.random() < 0.6
                    caption = f"{'A lesion of the' if lesion else 'The normal'} organ, figure {a}-{f}."
                    fid = s.execute(
                        insert(Figure).returning(Figure.id),
                        {"article_id": art_id, "key": f"fig{f}", "caption": caption, "mentions": [], "extra": {},
                         "figure_type": kind.value if kind else None, "type_confidence": 0.5 if kind else None,
                         "multipanel": multipanel},
                    ).scalar_one()
                    rows.append(Row(fid, kind.value if kind else None, multipanel, year, journal, license_, lesion))
        yield db.session_factory, rows


FILTERS = [
    Filters(),
    Filters(types=frozenset({FigureType.CT})),
    Filters(types=frozenset(FigureGroup.RADIOLOGY.types)),
    Filters(multipanel=False),
    Filters(types=frozenset({FigureType.CHART, FigureType.MRI}), multipanel=True, year_from=2016),
    Filters(journal="plos one", types=frozenset({FigureType.HISTOLOGY})),
    Filters(license="CC BY 4.0", year_to=2018, multipanel=False),
]


@pytest.mark.parametrize("filters", FILTERS)
def test_the_lexical_channel_applies_type_and_multipanel_filters_in_its_query(
    catalogue: tuple[sessionmaker[Session], list[Row]], filters: Filters
) -> None:
    factory, rows = catalogue
    with factory() as session:
        found = {h.figure_id for h in search_lexical(session, "lesion", 1000, filters, marks=False)}
    assert found == {r.id for r in rows if r.lesion and passes(r, filters)}


@pytest.mark.parametrize("filters", FILTERS)
def test_the_pager_join_keeps_exactly_the_candidates_that_pass(
    catalogue: tuple[sessionmaker[Session], list[Row]], filters: Filters
) -> None:
    factory, rows = catalogue
    order = [r.id for r in rows]
    random.Random(3).shuffle(order)
    kept = [fig.id for _, fig, _, _ in Pager(factory, Metrics()).join([Candidate(i, 0.0) for i in order], filters)]
    by_id = {r.id: r for r in rows}
    assert kept == [i for i in order if passes(by_id[i], filters)]  # candidates keep their order


def test_a_filtered_page_is_filled_from_deeper_candidates_not_cut_short(
    catalogue: tuple[sessionmaker[Session], list[Row]],
) -> None:
    """The filter is applied inside the search: the pager over-fetches until the page is full."""
    factory, rows = catalogue
    ct = [r.id for r in rows if r.figure_type == FigureType.CT.value]
    other = [r.id for r in rows if r.figure_type != FigureType.CT.value]
    ranked = other + ct  # every CT figure ranks below every other figure
    page = Pager(factory, Metrics()).page(
        lambda n: [Candidate(i, -float(rank)) for rank, i in enumerate(ranked[:n])], k=5, offset=0,
        filters=Filters(types=frozenset({FigureType.CT})), total=len(ranked), indexed=len(ranked), version=1,
    )
    assert [h.figure.id for h in page.hits] == ct[:5] and len(ct) >= 5


@pytest.mark.parametrize("filters", FILTERS)
def test_facet_counts_equal_a_brute_force_count(
    catalogue: tuple[sessionmaker[Session], list[Row]], filters: Filters
) -> None:
    factory, rows = catalogue
    candidates = [r for r in rows if r.lesion]  # a query's candidate set
    with factory() as session:
        counts = facet_counts(session, [r.id for r in candidates], filters, FACETS)
    assert set(counts) == set(FACETS)
    for facet in FACETS:
        expected = brute_force(candidates, filters, facet)
        assert {v.value: v.count for v in counts[facet]} == dict(expected), facet
        assert [v.count for v in counts[facet]] == sorted((v.count for v in counts[facet]), reverse=True)


def test_a_facet_ignores_its_own_filter_and_an_empty_candidate_set_counts_nothing(
    catalogue: tuple[sessionmaker[Session], list[Row]],
) -> None:
    factory, rows = catalogue
    ids = [r.id for r in rows]
    with factory() as session:
        plain = facet_counts(session, ids, Filters(), ("type",))
        picked = facet_counts(session, ids, Filters(types=frozenset({FigureType.CT})), ("type", "year"))
        empty = facet_counts(session, [], Filters(), FACETS)
        labelled = session.scalar(select(Figure.id).where(Figure.figure_type.is_(None)).limit(1))
    assert picked["type"] == plain["type"]  # ticking CT does not hide the other types' counts
    assert sum(v.count for v in picked["year"]) == sum(
        1 for r in rows if r.figure_type == FigureType.CT.value and r.year is not None
    )
    assert empty == {f: [] for f in FACETS}
    assert labelled is not None  # some figures are unlabelled, and no facet counted them as a type
    assert sum(v.count for v in plain["type"]) == sum(1 for r in rows if r.figure_type is not None)
