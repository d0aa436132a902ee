"""The catalogue's figure-caption pairs export (what `biomedsearch train` and the demo train on)."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from ingest_fixtures import LIMITS, factory_for

from indexer.catalogue import Article, Figure
from indexer.ingest import ingest_paths
from indexer.pairs_export import export_pairs


def test_export_writes_one_pair_per_stored_image_grouped_by_article(
    db_url: str, shared_data: Path, tmp_path: Path
) -> None:
    engine, factory = factory_for(db_url)
    home = tmp_path / "home"
    packages = [shared_data / "jats" / "packages" / f"{name}.tar.gz" for name in ("elife-19405", "pone.0056489")]
    xml_only = sorted((shared_data / "jats" / "xml-only").glob("*.nxml"))[:1]  # caption-only figures
    ingest_paths([*packages, *xml_only], factory, home, limits=LIMITS, progress=False)
    with factory() as s:
        with_image = s.scalar(sa.select(sa.func.count(Figure.id)).where(Figure.image_path.is_not(None)))
        total = s.scalar(sa.select(sa.func.count(Figure.id)))
        keys = set(s.scalars(sa.select(Article.key)))
    assert with_image and total and total > with_image  # the caption-only figures are left out

    out = tmp_path / "pairs" / "pairs.jsonl"
    assert export_pairs(factory, home, out) == with_image
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == with_image
    for line in lines:
        assert Path(line["image"]).is_absolute() and Path(line["image"]).is_file()
        assert line["caption"] and line["article"] in keys
    assert len({line["article"] for line in lines}) == 2
    assert not list(out.parent.glob(".*.tmp"))  # nothing half-written left behind
    engine.dispose()
