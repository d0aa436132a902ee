"""Withdrawing articles (a retraction): out of the catalogue, then out of every published index.

:func:`withdraw_articles` deletes the articles' rows in one transaction; their figures go with
them (ORM cascade), their stored vectors too (``ON DELETE CASCADE``), and the full-text index by
its triggers, so full-text search stops finding them at once. :func:`republish_indexes` then
publishes a new version of every model's indexes: :func:`indexer.index_update.update_indexes`
drops the figures that no longer have a stored vector, so the vector indexes stop holding them.
Stored media files are content-addressed (another figure may share one) and are left in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalogue import Article, Figure, IndexVersion, session_scope
from indexer.index_update import IndexOptions, IndexReport, update_indexes


def find_articles(
    session: Session, *, pmcid: str | None = None, doi: str | None = None, pmid: str | None = None
) -> list[int]:
    """Ids of the catalogue articles that are this article, by PMCID, DOI or PMID (its key or its
    id columns)."""
    conditions = []
    if pmcid:
        conditions += [Article.pmcid == pmcid, Article.key == f"pmcid:{pmcid}"]
    if doi:
        conditions += [Article.key == f"doi:{doi.lower()}", Article.doi == doi]
    if pmid:
        conditions += [Article.key == f"pmid:{pmid}", Article.pmid == pmid]
    if not conditions:
        return []
    return sorted(session.scalars(select(Article.id).where(or_(*conditions))).all())


def withdraw_articles(session_factory: sessionmaker[Session], article_ids: Sequence[int]) -> list[int]:
    """Delete the articles (with their figures and stored vectors); return the removed figure ids."""
    if not article_ids:
        return []
    with session_scope(session_factory) as session:
        figure_ids = sorted(session.scalars(select(Figure.id).where(Figure.article_id.in_(article_ids))).all())
        for article in session.scalars(select(Article).where(Article.id.in_(article_ids))):
            session.delete(article)
    return figure_ids


def republish_indexes(
    session_factory: sessionmaker[Session], index_dir: Path, options: IndexOptions, *, progress: bool = True
) -> list[IndexReport]:
    """Publish a new version of every model's indexes that has published versions (the vectors of
    withdrawn figures are dropped). Returns one report per model."""
    with session_factory() as session:
        model_ids = sorted(session.scalars(select(IndexVersion.model_id).distinct()).all())
    return [update_indexes(session_factory, index_dir, m, options=options, progress=progress) for m in model_ids]
