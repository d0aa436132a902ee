"""Facet counts over a query's candidate set: how many of its figures each filter value would keep.

The candidate set is bounded (the service counts over a query's best
:data:`app.pager.FACET_CANDIDATES` candidates), so a facet request costs a fixed, small amount
whatever the catalogue's size: one statement reads the facet values of at most that many figure
ids, found by primary key, and the values are counted here. Each facet is counted with every other
filter applied but its own
(:meth:`indexer.filters.Filters.without`), the usual rule for multi-select facets: ticking a second
type shows what it would add, not zero. Figures without a value (not yet labelled, no year) are not
counted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
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
    less the facet's own, with their counts, most frequent first (at most :data:`LIMITS`).

    One statement reads every candidate's facet values and, per facet, whether it passes the other
    filters (a ``CASE`` over :meth:`Filters.sql`); the ids travel as one bound parameter (a JSON
    array on SQLite, an array on PostgreSQL), so the statement text is the same for every query.
    """
    wanted = check_facets(facets)
    ids = list(dict.fromkeys(int(i) for i in figure_ids))
    if not ids or not wanted:
        return {facet: [] for facet in wanted}
    params: dict[str, Any] = {}
    columns = []
    for facet in wanted:
        where, values = filters.without(facet).sql("a", "f")
        params.update(values)  # the same names carry the same values in every facet's SQL
        columns += [_COLUMN[facet], f"CASE WHEN {where} THEN 1 ELSE 0 END" if where else "1"]
    if session.get_bind().dialect.name == "sqlite":
        in_ids, params["ids"] = "f.id IN (SELECT value FROM json_each(:ids))", json.dumps(ids)
    else:
        in_ids, params["ids"] = "f.id = ANY(:ids)", ids
    sql = (
        f"SELECT {', '.join(columns)} FROM figures f JOIN articles a ON a.id = f.article_id "  # noqa: S608
        f"WHERE {in_ids}"
    )
    counts: dict[str, Counter[Any]] = {facet: Counter() for facet in wanted}
    for row in session.execute(text(sql), params):
        for i, facet in enumerate(wanted):
            value, keep = row[2 * i], row[2 * i + 1]
            if keep and value is not None:
                counts[facet][value] += 1
    return {
        facet: [
            FacetValue(_value(facet, v), n)
            for v, n in sorted(counts[facet].items(), key=lambda item: (-item[1], str(item[0])))[: LIMITS[facet]]
        ]
        for facet in wanted
    }


def _value(facet: str, value: object) -> str | int | bool:
    if facet == "multipanel":
        return bool(value)
    if facet == "year":
        return int(value)  # type: ignore[call-overload]
    return str(value)
