"""Facet counts over a query's candidate set: how many of its figures each filter value would keep.

The candidate set is bounded (the service counts over a query's best
:data:`app.pager.FACET_CANDIDATES` candidates), so a facet request costs a fixed, small amount
whatever the catalogue's size: one ``GROUP BY`` per facet over at most that many figure ids, found
by primary key. Each facet is counted with every other filter applied but its own
(:meth:`indexer.filters.Filters.without`), the usual rule for multi-select facets: ticking a second
type shows what it would add, not zero. Figures without a value (not yet labelled, no year) are not
counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from indexer.filters import FACETS, Filters

_COLUMN = {
    "type": "f.figure_type",
    "multipanel": "f.multipanel",
    "year": "a.year",
    "journal": "a.journal",
    "license": "a.license",
}
LIMITS = {"type": 50, "multipanel": 2, "year": 50, "journal": 20, "license": 20}
"""At most this many values per facet, the most frequent first (ties: by value)."""


@dataclass(frozen=True)
class FacetValue:
    """One value of a facet and how many candidates have it."""

    value: str | int | bool
    count: int


def check_facets(names: Iterable[str]) -> tuple[str, ...]:
    """The requested facets, de-duplicated in order; ValueError naming an unknown one."""
    out: dict[str, None] = {}
    for raw in names:
        for name in raw.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in FACETS:
                raise ValueError(f"unknown facet {name!r} (one of: {', '.join(FACETS)})")
            out[name] = None
    return tuple(out)


def facet_counts(
    session: Session, figure_ids: Sequence[int], filters: Filters, facets: Sequence[str]
) -> dict[str, list[FacetValue]]:
    """For each of ``facets``: the values among ``figure_ids`` (the candidates) that pass ``filters``
    less the facet's own, with their counts, most frequent first (at most :data:`LIMITS`)."""
    out: dict[str, list[FacetValue]] = {}
    ids = list(dict.fromkeys(int(i) for i in figure_ids))
    for facet in check_facets(facets):
        if not ids:
            out[facet] = []
            continue
        column = _COLUMN[facet]
        where, params = filters.without(facet).sql("a", "f")
        sql = (
            f"SELECT {column} AS v, count(*) AS n FROM figures f JOIN articles a ON a.id = f.article_id "  # noqa: S608
            f"WHERE f.id IN :ids AND {column} IS NOT NULL{' AND ' + where if where else ''} "
            f"GROUP BY {column} ORDER BY n DESC, v LIMIT :limit"
        )
        stmt = text(sql).bindparams(bindparam("ids", expanding=True))
        rows = session.execute(stmt, {**params, "ids": ids, "limit": LIMITS[facet]})
        out[facet] = [FacetValue(_value(facet, v), int(n)) for v, n in rows]
    return out


def _value(facet: str, value: object) -> str | int | bool:
    if facet == "multipanel":
        return bool(value)
    if facet == "year":
        return int(value)  # type: ignore[call-overload]
    return str(value)
