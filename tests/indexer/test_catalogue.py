"""The catalogue schema: migrations, constraints and cascades, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from indexer.catalogue import (
    Article,
    Embedding,
    Figure,
    make_engine,
    make_session_factory,
    migrate,
    session_scope,
)


def _article(key: str = "pmcid:PMC1") -> Article:
    return Article(key=key, pmcid=key.split(":")[1], title="T", content_hash="0" * 64)


def test_migrate_creates_every_table_and_is_repeatable(db_url: str) -> None:
    migrate(db_url)  # a second upgrade is a no-op
    engine = make_engine(db_url)
    tables = set(sa.inspect(engine).get_table_names())
    assert {"articles", "figures", "embeddings", "index_versions", "jobs", "alembic_version"} <= tables
    engine.dispose()


def test_article_key_is_unique(db_url: str) -> None:
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        session.add(_article())
    with pytest.raises(IntegrityError), session_scope(factory) as session:
        session.add(_article())
    with session_scope(factory) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Article)) == 1
    engine.dispose()


def test_deleting_an_article_removes_its_figures_and_embeddings(db_url: str) -> None:
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        article = _article()
        article.figures = [Figure(key=f"fig{i}/0", caption=f"caption {i}", position=i) for i in range(3)]
        session.add(article)
        session.flush()
        for fig in article.figures:
            session.add(Embedding(figure_id=fig.id, model_id="m", kind="image", dim=2, vector=b"\0" * 8))
    with session_scope(factory) as session:
        session.delete(session.scalars(sa.select(Article)).one())
    with session_scope(factory) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Figure)) == 0
        # embeddings go by the database's ON DELETE CASCADE (no ORM relationship loads them)
        assert session.scalar(sa.select(sa.func.count()).select_from(Embedding)) == 0
    engine.dispose()


def test_figure_ids_are_never_reused(db_url: str) -> None:
    """FAISS indexes hold figure ids: a replaced figure's id must not come back for a new figure."""
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        article = _article()
        article.figures = [Figure(key="a/1", caption="old")]
        session.add(article)
    with session_scope(factory) as session:
        old = session.scalars(sa.select(Figure)).one()
        old_id = old.id
        session.delete(old)
    with session_scope(factory) as session:
        article = session.scalars(sa.select(Article)).one()
        article.figures.append(Figure(key="a/1", caption="new"))
    with session_scope(factory) as session:
        assert session.scalars(sa.select(Figure.id)).one() > old_id
    engine.dispose()


def test_migrations_and_models_agree(db_url: str) -> None:
    """Autogenerate against the migrated database proposes nothing: the models and the migrations
    describe the same schema, and the lexical index (raw SQL in 0002) is left alone."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from indexer.catalogue import Base, include_object, make_engine

    migrate(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_object": include_object})
            diffs = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diffs == []
