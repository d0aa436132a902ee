"""The catalogue filters of a search (year range, journal, license, figure type, multi-panel): one
object, one SQL builder.

Every channel that filters uses :meth:`Filters.sql`: the lexical channel inside its full-text
query (:mod:`indexer.lexical`), the service's catalogue join for the dense channels'
over-fetched candidates (:mod:`app.pager`), and the facet counts (:mod:`indexer.facets`, which
drop one facet's own filter with :meth:`Filters.without`). Values always travel as bound
parameters; the SQL text is made of constant fragments and the caller's table aliases only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from indexer.vocabulary import FigureType

FACETS = ("type", "multipanel", "year", "journal", "license")
"""The facets a search can count (``facets=``), each the name of the filter it drops (``without``)."""


@dataclass(frozen=True)
class Filters:
    """Article filters: publication year range (inclusive), journal and license (compared
    case-insensitively, surrounding spaces ignored); figure filters: the figure types to keep (any
    of them; a figure not yet labelled has none) and the multi-panel flag (``False``: single-panel
    figures only). ``None`` or empty means "any"."""

    year_from: int | None = None
    year_to: int | None = None
    journal: str | None = None
    license: str | None = None
    types: frozenset[FigureType] = frozenset()
    multipanel: bool | None = None

    @property
    def empty(self) -> bool:
        """True when no filter is set."""
        return (
            self.year_from is None
            and self.year_to is None
            and not self.journal
            and not self.license
            and not self.types
            and self.multipanel is None
        )

    def without(self, facet: str) -> Filters:
        """These filters less the one that facet ``facet`` (one of :data:`FACETS`) sets."""
        if facet == "type":
            return replace(self, types=frozenset())
        if facet == "multipanel":
            return replace(self, multipanel=None)
        if facet == "year":
            return replace(self, year_from=None, year_to=None)
        if facet == "journal":
            return replace(self, journal=None)
        if facet == "license":
            return replace(self, license=None)
        raise ValueError(f"unknown facet {facet!r} (one of {', '.join(FACETS)})")

    def sql(self, article: str, figure: str | None = None) -> tuple[str, dict[str, Any]]:
        """The filters as one SQL condition on the articles table aliased ``article`` (and the figures
        table aliased ``figure``, needed when a figure filter is set) and its bound parameters:
        ``("a.year >= :year_from AND f.figure_type IN (:type_0, :type_1)", {...})``.

        Returns ``("", {})`` when :attr:`empty`. The aliases must be trusted identifiers (constants of
        the caller), never user input.
        """
        for alias in (article, figure):
            if alias is not None and not alias.isidentifier():
                raise ValueError(f"not a table alias: {alias!r}")
        conds: list[str] = []
        params: dict[str, Any] = {}
        if self.year_from is not None:
            conds.append(f"{article}.year >= :year_from")
            params["year_from"] = self.year_from
        if self.year_to is not None:
            conds.append(f"{article}.year <= :year_to")
            params["year_to"] = self.year_to
        if self.journal:
            conds.append(f"lower({article}.journal) = :journal")
            params["journal"] = self.journal.strip().lower()
        if self.license:
            conds.append(f"lower({article}.license) = :license")
            params["license"] = self.license.strip().lower()
        if self.types or self.multipanel is not None:
            if figure is None:
                raise ValueError("figure filters need the figures table's alias")
            if self.types:
                names = sorted(t.value for t in self.types)
                conds.append(f"{figure}.figure_type IN ({', '.join(f':type_{i}' for i in range(len(names)))})")
                params.update({f"type_{i}": name for i, name in enumerate(names)})
            if self.multipanel is not None:
                conds.append(f"{figure}.multipanel = :multipanel")
                params["multipanel"] = self.multipanel
        return " AND ".join(conds), params
