"""check: index vs catalogue record vs stored embeddings, and --repair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import delete
from typer.testing import CliRunner
from vector_fixtures import MODEL, add_embeddings, add_figures, clustered, delete_figures, factory_for, populate

from app.cli import cli
from indexer.catalogue import IndexVersion
from indexer.index_update import IndexOptions, check_indexes, update_indexes
from indexer.publish import IndexStore, LiveIndexes

OPTS = IndexOptions(exact_index_max=1000)


def test_a_fresh_index_checks_clean(db_url: str, tmp_path: Path) -> None:
    factory = factory_for(db_url)
    populate(factory, 120)
    add_figures(factory, 3)  # figures without vectors yet
    update_indexes(factory, tmp_path, MODEL, options=OPTS, progress=False)
    report = check_indexes(factory, tmp_path, MODEL)
    assert report.ok, report.summary()
    image = report.kinds["image"]
    assert (image.version, image.ntotal, image.stored, image.unencoded) == (1, 120, 120, 3)


def test_stale_and_missing_vectors_are_found_and_repaired(db_url: str, tmp_path: Path) -> None:
    factory = factory_for(db_url)
    fids, _, _ = populate(factory, 150)
    update_indexes(factory, tmp_path, MODEL, options=OPTS, progress=False)
    delete_figures(factory, fids[:7])  # stale in both indexes
    store = IndexStore(tmp_path, MODEL)
    with store.writer_lock():  # publish a version that lost 5 vectors (missing)
        vindex, meta = store.load("caption", 1)
        vindex.remove(fids[20:25])
        store.publish(factory, "caption", vindex, max_embedding_id=meta.max_embedding_id)
    report = check_indexes(factory, tmp_path, MODEL)
    assert not report.ok
    assert (report.kinds["image"].stale, report.kinds["image"].missing) == (7, 0)
    assert (report.kinds["caption"].stale, report.kinds["caption"].missing) == (7, 5)

    repaired = check_indexes(factory, tmp_path, MODEL, repair=True, options=OPTS)
    assert repaired.kinds["caption"].repaired is not None
    assert check_indexes(factory, tmp_path, MODEL).ok
    live = LiveIndexes(tmp_path, MODEL)
    live.refresh()
    assert live.ntotal("caption") == live.ntotal("image") == 143


def test_a_corrupt_file_and_a_missing_record_are_problems_repair_rebuilds(sqlite_url: str, tmp_path: Path) -> None:
    factory = factory_for(sqlite_url)
    populate(factory, 80)
    update_indexes(factory, tmp_path, MODEL, options=OPTS, progress=False)
    store = IndexStore(tmp_path, MODEL)
    path = store.kind_dir("image") / "v0001.faiss"
    data = bytearray(path.read_bytes())
    data[-8:] = b"\x00" * 8  # same size, different bytes
    path.write_bytes(bytes(data))
    with factory.begin() as s:
        s.execute(delete(IndexVersion).where(IndexVersion.kind == "caption"))
    report = check_indexes(factory, tmp_path, MODEL)
    assert any("sha256" in p for p in report.kinds["image"].problems)
    assert any("no index_versions row" in p for p in report.kinds["caption"].problems)

    fixed = check_indexes(factory, tmp_path, MODEL, repair=True, options=OPTS)
    assert fixed.kinds["image"].repaired is not None and fixed.kinds["image"].repaired.action == "rebuilt"
    after = check_indexes(factory, tmp_path, MODEL)
    assert after.ok, after.summary()
    assert after.kinds["image"].version == 2


def test_cli_check_exits_non_zero_on_mismatch_and_zero_after_repair(sqlite_url: str, tmp_path: Path) -> None:
    factory = factory_for(sqlite_url)
    fids, _, _ = populate(factory, 60)
    env = {"BIOMEDSEARCH_DATA_HOME": str(tmp_path), "BIOMEDSEARCH_DATABASE_URL": sqlite_url}
    runner = CliRunner()
    index_dir = tmp_path / "indexes"
    update_indexes(factory, index_dir, MODEL, options=OPTS, progress=False)
    assert runner.invoke(cli, ["check"], env=env).exit_code == 0
    add_embeddings(factory, "image", add_figures(factory, 4), clustered(4, 32, seed=3))
    delete_figures(factory, fids[:2])
    result = runner.invoke(cli, ["check"], env=env)
    assert result.exit_code == 1 and "MISMATCH" in result.output
    result = runner.invoke(cli, ["check", "--repair"], env=env)
    assert result.exit_code == 0, result.output
    assert runner.invoke(cli, ["check"], env=env).exit_code == 0
    live = LiveIndexes(index_dir, MODEL)
    live.refresh()
    assert live.ntotal("image") == 62 and live.ntotal("caption") == 58
    _, found = live.search("image", clustered(4, 32, seed=3), 1)
    assert np.all(found[:, 0] > fids[-1])
