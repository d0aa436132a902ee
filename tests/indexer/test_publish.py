"""Versioned publication, incremental updates and the live reader that follows the pointer."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from vector_fixtures import MODEL, add_embeddings, add_figures, clustered, delete_figures, factory_for, populate

from indexer.catalogue import IndexVersion
from indexer.index_update import IndexOptions, update_indexes
from indexer.publish import IndexStore, LiveIndexes, ids_digest, model_slug
from indexer.vector_index import AnnSpec

OPTS = IndexOptions(exact_index_max=1000, ann=AnnSpec(codec="Flat"), tune_queries=200)


def test_first_build_publishes_both_kinds_and_live_reader_searches(db_url: str, tmp_path: Path) -> None:
    factory = factory_for(db_url)
    live = LiveIndexes(tmp_path, MODEL)
    assert not live.refresh() and live.version("image") is None
    _empty_scores, empty_ids = live.search("image", clustered(2, 32), 5)
    assert (empty_ids == -1).all() and empty_ids.shape == (2, 5)

    fids, img, cap = populate(factory, 200)
    report = update_indexes(factory, tmp_path, MODEL, options=OPTS, progress=False)
    assert {r.action for r in report.kinds.values()} == {"built"}
    assert report.kinds["image"].ntotal == report.kinds["caption"].ntotal == 200
    assert live.refresh() and live.version("image") == 1 and live.ntotal("caption") == 200
    _, found = live.search("image", img[:5], 1)
    assert found[:, 0].tolist() == fids[:5]
    _, found = live.search("caption", cap[10:12], 1)
    assert found[:, 0].tolist() == fids[10:12]

    with factory() as s:
        rows = s.scalars(select(IndexVersion).order_by(IndexVersion.kind)).all()
    assert [(r.kind, r.version, r.ntotal) for r in rows] == [("caption", 1, 200), ("image", 1, 200)]
    assert rows[1].ids_digest == ids_digest(np.array(fids)) and rows[1].max_embedding_id > 0
    kind_dir = tmp_path / model_slug(MODEL) / "image"
    assert json.loads((kind_dir / "CURRENT").read_text())["version"] == 1
    assert rows[1].path == f"{model_slug(MODEL)}/image/v0001.faiss"
    assert (tmp_path / rows[1].path).is_file()

    # nothing changed -> no new version, the reader stays
    again = update_indexes(factory, tmp_path, MODEL, options=OPTS, progress=False)
    assert {r.action for r in again.kinds.values()} == {"unchanged"}
    assert not live.refresh() and live.version("image") == 1


def test_incremental_add_and_remove_seen_by_refresh_without_restart(db_url: str, tmp_path: Path) -> None:
    factory = factory_for(db_url)
    fids, img, _ = populate(factory, 300)
    update_indexes(factory, tmp_path, MODEL, options=OPTS, progress=False)
    live = LiveIndexes(tmp_path, MODEL)
    live.refresh()

    new_ids = add_figures(factory, 40)
    new_img = clustered(40, 32, seed=77)
    add_embeddings(factory, "image", new_ids, new_img)
    gone = fids[:25]
    delete_figures(factory, gone)
    replaced = fids[100]
    add_embeddings(factory, "image", [replaced], clustered(1, 32, seed=55))

    report = update_indexes(factory, tmp_path, MODEL, options=OPTS, progress=False)
    image = report.kinds["image"]
    assert (image.action, image.version, image.added, image.removed) == ("updated", 2, 41, 25)
    assert image.ntotal == 300 - 25 + 40
    caption = report.kinds["caption"]
    assert (caption.action, caption.added, caption.removed, caption.ntotal) == ("updated", 0, 25, 275)

    assert live.version("image") == 1  # the reader holds v1 until it refreshes
    assert live.refresh() and live.version("image") == 2 and live.ntotal("image") == 315
    _, found = live.search("image", new_img, 1)
    assert found[:, 0].tolist() == new_ids
    _, found = live.search("image", img[:25], 10)
    assert not np.isin(found, gone).any()
    _, found = live.search("image", clustered(1, 32, seed=55), 1)
    assert found[0, 0] == replaced

    # the previous version stays loadable
    old, meta = IndexStore(tmp_path, MODEL).load("image", 1)
    assert old.ntotal == 300 and meta.version == 1


def test_crossing_exact_index_max_switches_to_tuned_ivf_and_growth_retrains(db_url: str, tmp_path: Path) -> None:
    factory = factory_for(db_url)
    opts = IndexOptions(exact_index_max=600, retrain_growth=1.5, ann=AnnSpec(codec="SQ8"), tune_queries=200)
    populate(factory, 500, seed=1)
    first = update_indexes(factory, tmp_path, MODEL, options=opts, progress=False).kinds["image"]
    assert first.shape == "exact"

    populate(factory, 500, seed=2, article_key="pmcid:PMC2")  # 1000 > 600
    second = update_indexes(factory, tmp_path, MODEL, options=opts, progress=False).kinds["image"]
    assert second.action == "rebuilt" and second.shape == "ivf" and "switched to IVF" in second.reason
    assert second.recall is not None and second.recall >= 0.95 and second.nprobe is not None

    populate(factory, 200, seed=3, article_key="pmcid:PMC3")  # 1200 < 1000 * 1.5: just added
    third = update_indexes(factory, tmp_path, MODEL, options=opts, progress=False).kinds["image"]
    assert (third.action, third.added, third.shape, third.ntotal) == ("updated", 200, "ivf", 1200)

    populate(factory, 400, seed=4, article_key="pmcid:PMC4")  # 1600 > 1000 * 1.5
    fourth = update_indexes(factory, tmp_path, MODEL, options=opts, progress=False).kinds["image"]
    assert fourth.action == "retrained" and "grew from 1000 to 1600" in fourth.reason

    live = LiveIndexes(tmp_path, MODEL)  # IVF versions load memory-mapped
    live.refresh()
    meta = live.meta("image")
    assert meta is not None and meta.params["trained_on"] == 1600 and meta.params["recall"] >= 0.95
    assert live.ntotal("image") == 1600


def test_old_versions_are_pruned_beyond_keep(sqlite_url: str, tmp_path: Path) -> None:
    factory = factory_for(sqlite_url)
    populate(factory, 50)
    for i in range(5):
        update_indexes(factory, tmp_path, MODEL, options=OPTS, progress=False)
        add_embeddings(factory, "image", add_figures(factory, 5), clustered(5, 32, seed=i + 10))
    store = IndexStore(tmp_path, MODEL)
    assert store.versions_on_disk("image") == [3, 4, 5]
    assert store.read_pointer("image") == 5
    with factory() as s:  # the catalogue keeps the history
        assert s.scalars(select(IndexVersion.version).where(IndexVersion.kind == "image")).all() == [1, 2, 3, 4, 5]


def test_searches_in_flight_during_publication_and_refresh_never_fail(sqlite_url: str, tmp_path: Path) -> None:
    factory = factory_for(sqlite_url)
    _, img, _ = populate(factory, 300)
    update_indexes(factory, tmp_path, MODEL, options=OPTS, progress=False)
    live = LiveIndexes(tmp_path, MODEL)
    live.refresh()
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                _, found = live.search("image", img[:20], 5)
                assert (found >= 0).all()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        for i in range(6):
            add_embeddings(factory, "image", add_figures(factory, 10), clustered(10, 32, seed=200 + i))
            update_indexes(factory, tmp_path, MODEL, options=OPTS, progress=False)
            assert live.refresh()
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert live.version("image") == 7 and live.ntotal("image") == 360


def test_wrong_width_queries_and_unknown_kind_are_refused(sqlite_url: str, tmp_path: Path) -> None:
    factory = factory_for(sqlite_url)
    populate(factory, 20)
    update_indexes(factory, tmp_path, MODEL, options=OPTS, progress=False)
    live = LiveIndexes(tmp_path, MODEL)
    live.refresh()
    with pytest.raises(ValueError, match="width"):
        live.search("image", np.zeros((1, 31), np.float32), 3)
    with pytest.raises(ValueError, match="kind"):
        live.search("video", np.zeros((1, 32), np.float32), 3)


def test_hnsw_structure_builds_tuned_adds_in_place_and_rebuilds_to_delete(db_url: str, tmp_path: Path) -> None:
    """``index_structure=hnsw``: above exact_index_max the index is an HNSW graph tuned to the recall
    target; new figures are added in place; deleted figures make the indexer rebuild the version."""
    factory = factory_for(db_url)
    opts = IndexOptions(exact_index_max=600, ann=AnnSpec(structure="hnsw"), tune_queries=200)
    fids, img, _ = populate(factory, 1000, seed=1)
    first = update_indexes(factory, tmp_path, MODEL, options=opts, progress=False).kinds["image"]
    assert (first.action, first.shape, first.ntotal) == ("built", "hnsw", 1000)
    assert first.recall is not None and first.recall >= 0.95 and "efSearch=" in first.line()

    new_ids = add_figures(factory, 40)
    new_img = clustered(40, 32, seed=77)
    add_embeddings(factory, "image", new_ids, new_img)
    second = update_indexes(factory, tmp_path, MODEL, options=opts, progress=False).kinds["image"]
    assert (second.action, second.added, second.removed, second.shape) == ("updated", 40, 0, "hnsw")

    delete_figures(factory, fids[:25])
    third = update_indexes(factory, tmp_path, MODEL, options=opts, progress=False).kinds["image"]
    assert third.action == "rebuilt" and "cannot delete in place" in third.reason
    assert (third.shape, third.ntotal) == ("hnsw", 1015)
    live = LiveIndexes(tmp_path, MODEL)
    live.refresh()
    _, found = live.search("image", new_img, 1)
    assert found[:, 0].tolist() == new_ids
    _, found = live.search("image", img[:25], 10)
    assert not np.isin(found, fids[:25]).any()

    # switching the configured structure back to IVF rebuilds
    back = update_indexes(factory, tmp_path, MODEL, options=IndexOptions(exact_index_max=600, tune_queries=200),
                          progress=False).kinds["image"]
    assert back.action == "rebuilt" and back.shape == "ivf" and "switched from HNSW to IVF" in back.reason
