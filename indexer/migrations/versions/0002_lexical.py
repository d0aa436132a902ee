"""lexical index over figure captions, mentions, article titles and labels

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 04:10:00

SQLite: an FTS5 table ``figure_fts`` (rowid = figure id; columns caption, mentions, title, label;
Porter stemming) kept in step by triggers on ``figures`` and ``articles``.
PostgreSQL: a table ``figure_lexical`` (figure id -> weighted tsvector, GIN-indexed; caption A,
title B, mentions C, label D) kept in step by PL/pgSQL triggers; deleting a figure cascades.
Because triggers do the work, no ingest / replace / delete code path can leave the index stale.
Existing rows are backfilled. This DDL is a frozen snapshot: it does not import ``indexer.lexical``.
"""

from __future__ import annotations

from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# --- SQLite ------------------------------------------------------------------------------------------

_SQLITE_MENTIONS = (
    "coalesce((SELECT group_concat(value, char(10)) FROM json_each("
    "CASE WHEN json_valid({m}) AND json_type({m}) = 'array' THEN {m} ELSE '[]' END)), '')"
)


def _sqlite_values(row: str) -> str:
    mentions = _SQLITE_MENTIONS.format(m=f"{row}.mentions")
    return (
        f"{row}.id, coalesce({row}.caption, ''), {mentions}, "
        f"coalesce((SELECT title FROM articles WHERE articles.id = {row}.article_id), ''), coalesce({row}.label, '')"
    )


SQLITE_UP = [
    "CREATE VIRTUAL TABLE figure_fts USING fts5(caption, mentions, title, label, "
    "tokenize = 'porter unicode61 remove_diacritics 2')",
    f"""CREATE TRIGGER figure_fts_ai AFTER INSERT ON figures BEGIN
        INSERT INTO figure_fts(rowid, caption, mentions, title, label) VALUES ({_sqlite_values('new')});
    END""",
    """CREATE TRIGGER figure_fts_ad AFTER DELETE ON figures BEGIN
        DELETE FROM figure_fts WHERE rowid = old.id;
    END""",
    f"""CREATE TRIGGER figure_fts_au AFTER UPDATE OF id, caption, mentions, label, article_id ON figures BEGIN
        DELETE FROM figure_fts WHERE rowid = old.id;
        INSERT INTO figure_fts(rowid, caption, mentions, title, label) VALUES ({_sqlite_values('new')});
    END""",
    """CREATE TRIGGER article_fts_au AFTER UPDATE OF title ON articles BEGIN
        UPDATE figure_fts SET title = coalesce(new.title, '')
        WHERE rowid IN (SELECT id FROM figures WHERE article_id = new.id);
    END""",
    f"INSERT INTO figure_fts(rowid, caption, mentions, title, label) SELECT {_sqlite_values('figures')} FROM figures",
]

SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS article_fts_au",
    "DROP TRIGGER IF EXISTS figure_fts_au",
    "DROP TRIGGER IF EXISTS figure_fts_ad",
    "DROP TRIGGER IF EXISTS figure_fts_ai",
    "DROP TABLE IF EXISTS figure_fts",
]

# --- PostgreSQL --------------------------------------------------------------------------------------

POSTGRES_UP = [
    """CREATE FUNCTION biomedsearch_figure_document(caption text, mentions json, title text, label text)
    RETURNS tsvector LANGUAGE sql IMMUTABLE AS $$
        SELECT setweight(to_tsvector('english', coalesce(caption, '')), 'A')
            || setweight(to_tsvector('english', coalesce(title, '')), 'B')
            || setweight(to_tsvector('english', coalesce(
                   CASE WHEN json_typeof(mentions) = 'array'
                        THEN (SELECT string_agg(m, E'\\n') FROM json_array_elements_text(mentions) AS m)
                   END, '')), 'C')
            || setweight(to_tsvector('english', coalesce(label, '')), 'D')
    $$""",
    """CREATE TABLE figure_lexical (
        figure_id integer PRIMARY KEY REFERENCES figures(id) ON DELETE CASCADE,
        document tsvector NOT NULL
    )""",
    "CREATE INDEX ix_figure_lexical_document ON figure_lexical USING GIN (document)",
    """CREATE FUNCTION biomedsearch_figure_lexical_sync() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO figure_lexical (figure_id, document)
        SELECT NEW.id, biomedsearch_figure_document(NEW.caption, NEW.mentions, a.title, NEW.label)
        FROM articles a WHERE a.id = NEW.article_id
        ON CONFLICT (figure_id) DO UPDATE SET document = EXCLUDED.document;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER figure_lexical_ai AFTER INSERT OR UPDATE OF caption, mentions, label, article_id ON figures
    FOR EACH ROW EXECUTE FUNCTION biomedsearch_figure_lexical_sync()""",
    """CREATE FUNCTION biomedsearch_article_lexical_sync() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE figure_lexical l
        SET document = biomedsearch_figure_document(f.caption, f.mentions, NEW.title, f.label)
        FROM figures f WHERE f.article_id = NEW.id AND l.figure_id = f.id;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER article_lexical_au AFTER UPDATE OF title ON articles
    FOR EACH ROW WHEN (OLD.title IS DISTINCT FROM NEW.title)
    EXECUTE FUNCTION biomedsearch_article_lexical_sync()""",
    """INSERT INTO figure_lexical (figure_id, document)
    SELECT f.id, biomedsearch_figure_document(f.caption, f.mentions, a.title, f.label)
    FROM figures f JOIN articles a ON a.id = f.article_id""",
]

POSTGRES_DOWN = [
    "DROP TRIGGER IF EXISTS article_lexical_au ON articles",
    "DROP TRIGGER IF EXISTS figure_lexical_ai ON figures",
    "DROP FUNCTION IF EXISTS biomedsearch_article_lexical_sync()",
    "DROP FUNCTION IF EXISTS biomedsearch_figure_lexical_sync()",
    "DROP TABLE IF EXISTS figure_lexical",
    "DROP FUNCTION IF EXISTS biomedsearch_figure_document(text, json, text, text)",
]


def _statements(up: bool) -> list[str]:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        return SQLITE_UP if up else SQLITE_DOWN
    if dialect == "postgresql":
        return POSTGRES_UP if up else POSTGRES_DOWN
    raise NotImplementedError(f"no lexical index DDL for the {dialect!r} dialect")


def upgrade() -> None:
    for statement in _statements(up=True):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(up=False):
        op.execute(statement)
