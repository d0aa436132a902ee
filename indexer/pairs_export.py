"""Export the catalogue's figure-caption pairs as a JSONL manifest (what training reads).

One line per figure with a stored image: ``{"image": absolute path, "caption": ..., "article":
Article.key}``; the article key is the group that training splits by, so figures of one article
never land on both sides of a train/validation split. The file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalogue import Article, Figure
from training.fsio import atomic_file


def export_pairs(factory: sessionmaker[Session], data_home: Path, out: Path) -> int:
    """Write the pairs of the catalogue behind ``factory`` (image paths resolved against
    ``data_home``) to ``out``; returns the number of pairs written (0 writes an empty file)."""
    n = 0
    with factory() as session, atomic_file(out, "w", encoding="utf-8") as fh:
        rows = session.execute(
            select(Figure.image_path, Figure.caption, Article.key)
            .join(Article, Figure.article_id == Article.id)
            .where(Figure.image_path.is_not(None))
            .order_by(Figure.id)
        )
        for image_path, caption, key in rows:
            if image_path is None:  # excluded by the query; narrows the type
                continue
            fh.write(json.dumps({"image": str(data_home / image_path), "caption": caption, "article": key}) + "\n")
            n += 1
    return n
