"""The figure catalogue: SQLAlchemy 2 models and the engine / session factory.

The schema is created and upgraded only through Alembic migrations (``indexer/migrations``).
:func:`open_database` is the one place that migrates a database and opens its engine and session
factory (the CLI, ``create_app``, the demo and the benchmarks call it with the URL they were given).

Tables:

- ``articles``: one row per article (PMC package, JATS file or JSONL manifest source).
- ``figures``: one row per figure image (a ``<fig>`` with two graphics gives two rows sharing the
  caption) or per caption-only figure (no image file found).
- ``embeddings``: one float32 vector per (figure, model, kind) where kind is ``image`` or ``caption``.
- ``figure_labels``: each figure's type (:class:`indexer.vocabulary.FigureType`) and its confidence per
  (figure, model): a new encoder labels anew. ``figures.figure_type`` / ``type_confidence`` /
  ``type_model`` hold the label of the model that labelled last, and ``figures.multipanel`` the
  (model-independent) multi-panel flag: what search filters and facets read (:mod:`indexer.labels`).
- ``index_versions``: every published FAISS index version and what it holds.
- ``jobs``: durable re-index jobs (the service's queue).
- ``pmc_objects``: every PMC Cloud metadata object a fetch has seen (key, ETag, outcome), so an
  incremental fetch only downloads what changed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from indexer.vocabulary import JobState


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC (what every timestamp column stores)."""
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of every catalogue table."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012


class Article(Base):
    """An article: its identifiers, bibliographic metadata and where it came from."""

    __tablename__ = "articles"
    # Ids are never reused on SQLite either: FAISS indexes and the embedding watermark hold them.
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Stable identity used for idempotent re-ingest: "pmcid:PMC123", "doi:10.x/y", "pmid:1",
    # "file:<xml stem>" or "manifest:<name>" (first that exists, in that order).
    key: Mapped[str] = mapped_column(String(300), unique=True)
    pmcid: Mapped[str | None] = mapped_column(String(32), index=True)
    pmid: Mapped[str | None] = mapped_column(String(32), index=True)
    doi: Mapped[str | None] = mapped_column(String(300), index=True)
    title: Mapped[str | None] = mapped_column(Text)
    journal: Mapped[str | None] = mapped_column(String(500), index=True)
    year: Mapped[int | None] = mapped_column(Integer, index=True)
    license: Mapped[str | None] = mapped_column(String(200), index=True)
    license_url: Mapped[str | None] = mapped_column(String(500))
    lang: Mapped[str | None] = mapped_column(String(16))
    article_type: Mapped[str | None] = mapped_column(String(100))
    source: Mapped[str | None] = mapped_column(Text)  # file name or URL it was ingested from
    # sha256 of the source XML (or manifest lines): same hash -> nothing to do on re-ingest.
    content_hash: Mapped[str] = mapped_column(String(64))
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    figures: Mapped[list[Figure]] = relationship(
        back_populates="article", cascade="all, delete-orphan", order_by="Figure.position"
    )


class Figure(Base):
    """One figure image (or one caption-only figure) with its caption and stored media."""

    __tablename__ = "figures"
    __table_args__ = (
        UniqueConstraint("article_id", "key", name="uq_figures_article_key"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"), index=True)
    # Unique inside the article: "<fig id or fig-N>/<graphic index>" (or the manifest line id).
    key: Mapped[str] = mapped_column(String(300))
    fig_id: Mapped[str | None] = mapped_column(String(200))  # the XML @id, when it has one
    position: Mapped[int] = mapped_column(Integer, default=0)  # order inside the article
    label: Mapped[str | None] = mapped_column(String(200))
    caption_title: Mapped[str | None] = mapped_column(Text)
    caption: Mapped[str] = mapped_column(Text, default="")  # title + paragraphs, clean text
    mentions: Mapped[list[Any]] = mapped_column(JSON, default=list)  # body sentences citing it
    section: Mapped[str | None] = mapped_column(String(100))  # body / boxed-text / app / supplementary
    graphic_href: Mapped[str | None] = mapped_column(Text)
    image_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    image_path: Mapped[str | None] = mapped_column(Text)  # relative to the data home
    thumb_path: Mapped[str | None] = mapped_column(Text)  # relative to the data home
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    skip_reason: Mapped[str | None] = mapped_column(Text)  # why no image is stored, if none
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The current label (a copy of the figure_labels row of type_model; None until labelled).
    figure_type: Mapped[str | None] = mapped_column(String(32), index=True)  # a FigureType
    type_confidence: Mapped[float | None] = mapped_column(Float)  # 0..1
    type_model: Mapped[str | None] = mapped_column(String(200))  # the model id that labelled it
    multipanel: Mapped[bool | None] = mapped_column(Boolean, index=True)  # None until labelled
    multipanel_evidence: Mapped[str | None] = mapped_column(String(16))  # a PanelEvidence

    article: Mapped[Article] = relationship(back_populates="figures")


class FigureLabel(Base):
    """A figure's type as one model's classifier saw it (kept per model, so switching back to an
    encoder needs no re-labelling, and a new classifier version labels anew)."""

    __tablename__ = "figure_labels"

    figure_id: Mapped[int] = mapped_column(ForeignKey("figures.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    classifier: Mapped[str] = mapped_column(String(32))  # indexer.figure_types.CLASSIFIER_VERSION
    figure_type: Mapped[str] = mapped_column(String(32))  # a FigureType
    confidence: Mapped[float] = mapped_column(Float)  # 0..1
    image_used: Mapped[bool] = mapped_column(Boolean)  # False: caption only (no image vector yet)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Embedding(Base):
    """A stored float32 vector for one figure under one model (kind: ``image`` or ``caption``)."""

    __tablename__ = "embeddings"
    __table_args__ = (
        UniqueConstraint("figure_id", "model_id", "kind", name="uq_embeddings_figure_model_kind"),
        Index("ix_embeddings_model_kind_id", "model_id", "kind", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    figure_id: Mapped[int] = mapped_column(ForeignKey("figures.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # little-endian float32, L2-normalised
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IndexVersion(Base):
    """One published FAISS index file for (model, kind) and what it holds."""

    __tablename__ = "index_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "kind", "version", name="uq_index_versions"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # relative to the index directory
    index_type: Mapped[str] = mapped_column(String(100))
    ntotal: Mapped[int] = mapped_column(Integer)
    # Highest embeddings.id folded into this version and a checksum of the figure ids it holds.
    max_embedding_id: Mapped[int] = mapped_column(Integer, default=0)
    ids_digest: Mapped[str] = mapped_column(String(64), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """A durable background job (ingest uploads / fetch PMCIDs, embed, publish)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_id", "state", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # a JobKind
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)  # a JobState
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    stage: Mapped[str | None] = mapped_column(String(64))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    errors: Mapped[list[Any]] = mapped_column(JSON, default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class PmcObject(Base):
    """A PMC Cloud Service metadata object (``metadata/PMC<n>.<v>.json``) a fetch has seen.

    ``etag`` and ``status`` (:class:`indexer.vocabulary.PmcObjectStatus`) decide whether a later
    inventory run fetches the version again: a settled status with the same ETag is skipped.
    """

    __tablename__ = "pmc_objects"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    etag: Mapped[str] = mapped_column(String(100))
    pmcid: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    license_code: Mapped[str | None] = mapped_column(String(100))
    last_modified: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    detail: Mapped[str | None] = mapped_column(Text)
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine for ``url``.

    SQLite files get their parent directory created, WAL journaling (readers never block the
    writer), foreign keys on and a busy timeout, so the API and a worker can share one file.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay usable after commit (``expire_on_commit=False``)."""
    return sessionmaker(engine, expire_on_commit=False)


@dataclass(frozen=True)
class Database:
    """An open catalogue database: its URL, engine and session factory (``dispose()`` closes the
    engine's connections; ``with open_database(url) as db:`` does so on exit)."""

    url: str
    engine: Engine
    session_factory: sessionmaker[Session]

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.dispose()


def open_database(url: str, *, migrate_schema: bool = True, echo: bool = False) -> Database:
    """Bring the database at ``url`` to the newest schema (unless ``migrate_schema`` is False: a
    reader of a catalogue that must already exist), then open its engine and session factory.

    Raises whatever the driver or Alembic raises for a database that cannot be reached or migrated.
    """
    if migrate_schema:
        migrate(url)
    engine = make_engine(url, echo=echo)
    return Database(url, engine, make_session_factory(engine))


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction: commits on success, rolls back and re-raises on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema revision (Alembic ``upgrade head``)."""
    from alembic import command
    from alembic.config import Config

    here = Path(__file__).parent / "migrations"
    cfg = Config()
    cfg.set_main_option("script_location", str(here))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


# Objects that migration 0002 creates in raw SQL and the models do not describe: the lexical index
# (SQLite FTS5 table ``figure_fts`` and its shadow tables; PostgreSQL ``figure_lexical``).
LEXICAL_TABLES = ("figure_fts", "figure_lexical")


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic autogenerate filter (``env.py``): leave the lexical index alone; it is not in the
    models on purpose, and autogenerate would otherwise propose dropping it."""
    if type_ == "table" and name is not None and name.startswith(LEXICAL_TABLES):
        return False
    table = getattr(getattr(obj, "table", None), "name", "")
    return not (type_ in ("index", "column") and str(table).startswith(LEXICAL_TABLES))
