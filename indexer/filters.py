"""The catalogue filters of a search (year range, journal, license): one object, one SQL builder.

Every channel that filters uses :meth:`Filters.sql`: the lexical channel inside its full-text
query (:mod:`indexer.lexical`), and the service's catalogue join for the dense channels'
over-fetched candidates (:mod:`app.pager`). Values always travel as bound parameters; the SQL
text is made of constant fragments and the caller's table alias only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Filters:
    """Article filters: publication year range (inclusive), journal and license (compared
    case-insensitively, surrounding spaces ignored). ``None`` or empty means "any"."""

    year_from: int | None = None
    year_to: int | None = None
    journal: str | None = None
    license: str | None = None

    @property
    def empty(self) -> bool:
        """True when no filter is set."""
        return self.year_from is None and self.year_to is None and not self.journal and not self.license

    def sql(self, article: str) -> tuple[str, dict[str, Any]]:
        """The filters as one SQL condition on the articles table aliased ``article`` and its bound
        parameters: ``("a.year >= :year_from AND lower(a.journal) = :journal", {...})``.

        Returns ``("", {})`` when :attr:`empty`. ``article`` must be a trusted identifier (a
        constant of the caller), never user input.
        """
        if not article.isidentifier():
            raise ValueError(f"not a table alias: {article!r}")
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
        return " AND ".join(conds), params
