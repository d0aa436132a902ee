"""The lexical index: BM25-style full-text search over each figure's caption, mentions, article
title and label, with the matched terms and where they matched.

The index lives in the catalogue database and is kept in step with it by triggers created in
migration ``0002`` (so every ingest, replace and delete updates it, whatever code path did it):

- **SQLite**: an FTS5 table ``figure_fts`` (rowid = figure id; Porter stemming, diacritics
  folded), ranked with FTS5's ``bm25()`` and per-column weights (:data:`FIELD_WEIGHTS`).
- **PostgreSQL**: ``figure_lexical`` (figure id -> weighted ``tsvector``, GIN-indexed; caption A,
  title B, mentions C, label D). PostgreSQL's ``ts_rank`` has no inverse document frequency, so the
  score is BM25-like: sum over query terms of ``idf(term) * ts_rank(document, term)`` with the same
  field weights and length normalisation, the document frequencies counted in one pass over the
  matching rows.

User text never reaches FTS syntax: :func:`query_terms` keeps letters and digits only, and each
term is quoted (FTS5) or passed as a bound parameter (PostgreSQL); the SQL strings assembled here
are made of constant fragments and parameter names only (hence the ``noqa: S608``).

Ranking: figures that contain **every** query term come first, by their BM25 score, then those
that contain some of them, by theirs (the "all words first" rule of web search engines). On SQLite
this is also what makes the channel fast: the all-terms query intersects posting lists (0.9 ms
median over 100k captions) where the any-term query scores every figure that has a common word like
"ct" (22 ms); the any-term query only runs when fewer than ``k`` figures contain every term. On
PostgreSQL both tiers come from the one any-term query. On the relevance query sets (lexical mode,
a catalogue of the JATS articles and the MedPix val cases) nDCG@10 went from 0.974 to 0.991 (JATS
caption titles) and stayed at 0.399 (MedPix diagnoses) with this rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.orm import Session

from indexer.filters import Filters

FIELDS: tuple[str, ...] = ("caption", "mention", "title", "label")
"""Where a term can match, in the index's column order."""

FIELD_WEIGHTS: dict[str, float] = {"caption": 1.0, "mention": 0.5, "title": 0.4, "label": 0.2}
"""Relative weight of a match in each field (BM25 column weights / tsvector label weights)."""

MAX_TERMS = 32
"""Query terms beyond this many are ignored (a pasted paragraph is not a query)."""

STOPWORDS = frozenset(
    ("a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "in", "into", "is", "it",
     "its", "of", "on", "or", "that", "the", "their", "there", "these", "this", "to", "was", "were", "which", "with",
     "without")
)

_TOKEN = re.compile(r"[^\W_]+")
_OPEN, _CLOSE = "\x02", "\x03"  # highlight marks: control characters never present in clean text
_MARKED = re.compile(f"{_OPEN}(.*?){_CLOSE}", re.S)


class LexicalHit(NamedTuple):
    """One lexical result.

    ``terms``: the words of the figure's text that matched (as written there, lower-cased), for
    highlighting; ``where``: field (``caption`` / ``mention`` / ``title`` / ``label``) -> the
    matched words in that field.
    """

    figure_id: int
    score: float
    terms: tuple[str, ...]
    where: dict[str, tuple[str, ...]]


def query_terms(query: str) -> list[str]:
    """The search terms of ``query``: lower-cased runs of letters/digits, stop words and
    one-character tokens dropped, duplicates removed, at most :data:`MAX_TERMS`, in order."""
    seen: dict[str, None] = {}
    for token in _TOKEN.findall(query.lower()):
        if len(token) > 1 and token not in STOPWORDS:
            seen.setdefault(token, None)
    return list(seen)[:MAX_TERMS]


def fts5_query(terms: Sequence[str], *, all_terms: bool = False) -> str:
    """An FTS5 MATCH expression of the quoted ``terms`` (which :func:`query_terms` made safe): OR-ed,
    or AND-ed with ``all_terms``."""
    return (" AND " if all_terms else " OR ").join('"' + t.replace('"', "") + '"' for t in terms)


def _filter_sql(filters: Filters | None, fid: str, params: dict[str, Any]) -> str:
    """``AND ...`` restricting figure id column ``fid`` to figures whose article passes ``filters``
    (their SQL from :meth:`indexer.filters.Filters.sql`; its parameters are added to ``params``)."""
    if filters is None:
        return ""
    where, values = filters.sql("a", "f")
    if not where:
        return ""
    params.update(values)
    return f" AND {fid} IN (SELECT f.id FROM figures f JOIN articles a ON a.id = f.article_id WHERE {where})"  # noqa: S608


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def search_lexical(
    session: Session, query: str, k: int, filters: Filters | None = None, *, marks: bool = True
) -> list[LexicalHit]:
    """The best ``k`` figures for ``query`` by BM25-style full-text ranking, best first.

    Inputs: an open session on a migrated catalogue, the user's text (any characters), the number
    of results, optional article filters. Returns up to ``k`` :class:`LexicalHit` (score: higher
    is better; comparable within one query only). A query without usable terms returns ``[]``.
    ``marks=False`` skips finding which words matched where (``terms`` and ``where`` stay empty):
    the service ranks 50 candidates per channel but shows 10, and asks :func:`match_terms` for
    the shown ones only.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    terms = query_terms(query)
    if not terms:
        return []
    dialect = _dialect(session)
    if dialect == "sqlite":
        ranked = _rank_sqlite(session, terms, k, filters)
    elif dialect == "postgresql":
        ranked = _rank_postgres(session, terms, k, filters)
    else:
        raise NotImplementedError(f"no lexical search for the {dialect!r} dialect")
    found = match_terms(session, query, [fid for fid, _ in ranked]) if marks else {}
    return [LexicalHit(fid, score, *found.get(fid, ((), {}))) for fid, score in ranked]


def match_terms(
    session: Session, query: str, ids: Sequence[int]
) -> dict[int, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]]:
    """For figures ``ids``, the words of their text that match ``query``'s terms (for highlighting).

    Returns figure id -> (the matched words in field order, field -> the words matched there), for
    the figures that match at all; the words are as written in the figure's text, lower-cased.
    """
    terms = query_terms(query)
    if not terms or not ids:
        return {}
    dialect = _dialect(session)
    if dialect == "sqlite":
        marked = _marks_sqlite(session, terms, list(ids))
    elif dialect == "postgresql":
        marked = _marks_postgres(session, terms, list(ids))
    else:
        raise NotImplementedError(f"no lexical search for the {dialect!r} dialect")
    out: dict[int, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {}
    for fid, where in marked.items():
        out[fid] = (tuple(dict.fromkeys(t for field in FIELDS for t in where.get(field, ()))), where)
    return out


def _marked_words(highlighted: str | None) -> tuple[str, ...]:
    """The distinct words between highlight marks, lower-cased, in order of appearance."""
    if not highlighted:
        return ()
    return tuple(dict.fromkeys(m.strip().lower() for m in _MARKED.findall(highlighted) if m.strip()))


# --- SQLite (FTS5) -------------------------------------------------------------------------------------


def _rank_sqlite(session: Session, terms: list[str], k: int, filters: Filters | None) -> list[tuple[int, float]]:
    """All-terms matches by BM25, then (only when they are fewer than ``k``) any-term matches."""
    full = _bm25_sqlite(session, fts5_query(terms, all_terms=True), k, filters) if len(terms) > 1 else []
    if len(full) >= k:
        return full
    seen = {fid for fid, _ in full}
    some = _bm25_sqlite(session, fts5_query(terms), k + len(full), filters)
    return full + [hit for hit in some if hit[0] not in seen][: k - len(full)]


def _bm25_sqlite(session: Session, match: str, k: int, filters: Filters | None) -> list[tuple[int, float]]:
    params: dict[str, Any] = {"q": match, "k": k}
    weights = ", ".join(str(FIELD_WEIGHTS[f]) for f in FIELDS)
    sql = (
        f"SELECT rowid, bm25(figure_fts, {weights}) AS r FROM figure_fts WHERE figure_fts MATCH :q"  # noqa: S608
        + _filter_sql(filters, "rowid", params)
        + " ORDER BY r LIMIT :k"
    )
    return [(int(fid), -float(r)) for fid, r in session.execute(text(sql), params)]


def _marks_sqlite(session: Session, terms: list[str], ids: list[int]) -> dict[int, dict[str, tuple[str, ...]]]:
    if not ids:
        return {}
    cols = ", ".join(f"highlight(figure_fts, {i}, :o, :c)" for i in range(len(FIELDS)))
    placeholders = ", ".join(f":id{i}" for i in range(len(ids)))
    params: dict[str, Any] = {"q": fts5_query(terms), "o": _OPEN, "c": _CLOSE}
    params.update({f"id{i}": fid for i, fid in enumerate(ids)})
    sql = f"SELECT rowid, {cols} FROM figure_fts WHERE figure_fts MATCH :q AND rowid IN ({placeholders})"  # noqa: S608
    out: dict[int, dict[str, tuple[str, ...]]] = {}
    for row in session.execute(text(sql), params):
        where = {field: _marked_words(row[i + 1]) for i, field in enumerate(FIELDS)}
        out[int(row[0])] = {f: w for f, w in where.items() if w}
    return out


# --- PostgreSQL (tsvector) --------------------------------------------------------------------------------

# ts_rank weights are given in label order {D, C, B, A} = {label, mention, title, caption}
_PG_WEIGHTS = "{" + ", ".join(str(FIELD_WEIGHTS[f]) for f in ("label", "mention", "title", "caption")) + "}"


def _pg_term_queries(terms: list[str], params: dict[str, Any]) -> list[str]:
    exprs = []
    for i, term in enumerate(terms):
        params[f"t{i}"] = term
        exprs.append(f"plainto_tsquery('english', :t{i})")
    return exprs


def _rank_postgres(
    session: Session, terms: list[str], k: int, filters: Filters | None
) -> list[tuple[int, float]]:
    params: dict[str, Any] = {"k": k, "w": _PG_WEIGHTS}
    tq = _pg_term_queries(terms, params)
    any_q = " || ".join(tq)
    where = f"document @@ ({any_q})" + _filter_sql(filters, "figure_id", params)
    counts = ", ".join(f"count(*) FILTER (WHERE document @@ {q})" for q in tq)
    row = session.execute(text(f"SELECT count(*), {counts} FROM figure_lexical WHERE {where}"), params).one()  # noqa: S608
    if not row[0]:
        return []
    total = int(session.scalar(text("SELECT count(*) FROM figure_lexical")) or 0)
    idf = [math.log(1.0 + (total - df + 0.5) / (df + 0.5)) for df in (int(x) for x in row[1:])]
    score = " + ".join(
        f"{idf[i]!r} * ts_rank(CAST(:w AS real[]), document, {q}, 1)" for i, q in enumerate(tq) if row[i + 1]
    )
    every = "(document @@ (" + " && ".join(tq) + "))"  # all terms first, as on SQLite
    sql = (
        f"SELECT figure_id, {score} AS s FROM figure_lexical WHERE {where} "  # noqa: S608
        f"ORDER BY {every} DESC, s DESC, figure_id LIMIT :k"
    )
    return [(int(fid), float(s)) for fid, s in session.execute(text(sql), params)]


def _marks_postgres(session: Session, terms: list[str], ids: list[int]) -> dict[int, dict[str, tuple[str, ...]]]:
    if not ids:
        return {}
    params: dict[str, Any] = {"ids": ids, "opts": f"StartSel={_OPEN}, StopSel={_CLOSE}, HighlightAll=true"}
    q = " || ".join(_pg_term_queries(terms, params))
    mentions = (
        "CASE WHEN json_typeof(f.mentions) = 'array' THEN "
        "(SELECT string_agg(m, E'\\n') FROM json_array_elements_text(f.mentions) AS m) END"
    )
    fields = {"caption": "f.caption", "mention": mentions, "title": "a.title", "label": "f.label"}
    cols = ", ".join(
        f"CASE WHEN to_tsvector('english', coalesce({expr}, '')) @@ ({q}) "
        f"THEN ts_headline('english', {expr}, ({q}), :opts) END"
        for expr in fields.values()
    )
    sql = f"SELECT f.id, {cols} FROM figures f JOIN articles a ON a.id = f.article_id WHERE f.id = ANY(:ids)"  # noqa: S608
    out: dict[int, dict[str, tuple[str, ...]]] = {}
    for row in session.execute(text(sql), params):
        where = {field: _marked_words(row[i + 1]) for i, field in enumerate(fields)}
        out[int(row[0])] = {f: w for f, w in where.items() if w}
    return out


# --- maintenance -----------------------------------------------------------------------------------------


def rebuild_lexical(session: Session) -> int:
    """Re-derive the whole lexical index from the catalogue (the triggers keep it in step after).

    For a catalogue written before migration ``0002`` or repaired by hand. Runs in the caller's
    transaction; returns the number of figures indexed.
    """
    dialect = _dialect(session)
    if dialect == "sqlite":
        session.execute(text("DELETE FROM figure_fts"))
        session.execute(
            text(
                "INSERT INTO figure_fts(rowid, caption, mentions, title, label) "
                "SELECT f.id, coalesce(f.caption, ''), coalesce((SELECT group_concat(value, char(10)) "
                "FROM json_each(CASE WHEN json_valid(f.mentions) AND json_type(f.mentions) = 'array' "
                "THEN f.mentions ELSE '[]' END)), ''), coalesce(a.title, ''), coalesce(f.label, '') "
                "FROM figures f JOIN articles a ON a.id = f.article_id"
            )
        )
        return int(session.scalar(text("SELECT count(*) FROM figure_fts")) or 0)
    if dialect == "postgresql":
        session.execute(text("DELETE FROM figure_lexical"))
        session.execute(
            text(
                "INSERT INTO figure_lexical (figure_id, document) "
                "SELECT f.id, biomedsearch_figure_document(f.caption, f.mentions, a.title, f.label) "
                "FROM figures f JOIN articles a ON a.id = f.article_id"
            )
        )
        return int(session.scalar(text("SELECT count(*) FROM figure_lexical")) or 0)
    raise NotImplementedError(f"no lexical index for the {dialect!r} dialect")


def lexical_count(session: Session) -> int:
    """Figures in the lexical index (equal to the figure count when it is in step)."""
    table = "figure_fts" if _dialect(session) == "sqlite" else "figure_lexical"
    return int(session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)  # noqa: S608 (fixed names)
