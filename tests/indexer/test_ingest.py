"""Ingestion into the catalogue, on SQLite and PostgreSQL: counts against the shared manifest,
stored images, caption-only figures, idempotence, replacement of newer versions, JSONL manifests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import sqlalchemy as sa
from ingest_fixtures import LIMITS, article_xml, factory_for, fig, jpeg_bytes, manifest_entries, resolved_fig_graphics
from PIL import Image
from typer.testing import CliRunner

from indexer.catalogue import Article, Figure
from indexer.ingest import ingest_paths

SOME = ("elife-19405", "pone.0038869", "2236-8906-hoehnea-49-e1112020")


def _figures_by_article(factory) -> dict[str, list[Figure]]:  # type: ignore[no-untyped-def]
    with factory() as s:
        out: dict[str, list[Figure]] = {}
        for article in s.scalars(sa.select(Article)):
            out[article.key] = list(article.figures)
        return out


def test_packages_ingest_with_counts_images_and_caption_only_rows(
    db_url: str, shared_data: Path, tmp_path: Path
) -> None:
    jats = shared_data / "jats"
    entries = manifest_entries(jats)
    engine, factory = factory_for(db_url)
    home = tmp_path / "home"
    report = ingest_paths([jats / "packages" / f"{i}.tar.gz" for i in SOME], factory, home, limits=LIMITS,
                          progress=False)
    assert not report.failed
    assert report.count("added") == 3 and len(report.article_ids) == 3
    outcomes = {o.source.split(".tar.gz")[0]: o for o in report.articles}
    for entry_id in SOME:
        entry = entries[entry_id]
        assert outcomes[entry_id].figure_elements == entry["figures"]
        assert outcomes[entry_id].figures == entry["figures"]
        assert outcomes[entry_id].images == resolved_fig_graphics(entry)
    missing = entries["pone.0038869"]["unresolved_figure_hrefs"]
    assert sorted(s.detail.split("'")[1] for s in report.skipped) == sorted(missing)  # type: ignore[arg-type]

    rows = _figures_by_article(factory)
    plos = rows["doi:10.1371/journal.pone.0038869"]
    assert len(plos) == 22
    stored = [f for f in plos if f.image_path]
    assert [f.fig_id for f in stored] == ["pone-0038869-g001", "pone-0038869-g002"]
    for f in stored:
        with Image.open(home / f.image_path) as img:
            assert img.mode == "RGB" and img.size == (f.width, f.height)
        assert (home / (f.thumb_path or "")).is_file()
    caption_only = [f for f in plos if not f.image_path]
    assert all(f.skip_reason and "no file for href" in f.skip_reason for f in caption_only)
    assert all(f.caption for f in caption_only)
    hoehnea = rows["doi:10.1590/2236-8906-111/2020"]
    assert [f.key for f in hoehnea] == ["fig-1/1", "f2/1", "f3/1"]
    elife = rows["doi:10.7554/elife.19405"][0]
    assert elife.mentions and all("Figure 1" in m for m in elife.mentions)
    with factory() as s:
        article = s.scalar(sa.select(Article).where(Article.key == "doi:10.7554/elife.19405"))
        assert article is not None
        assert (article.year, article.license, article.journal) == (2016, "CC BY 4.0", "eLife")
    engine.dispose()
    assert "3 articles (3 added" in report.summary()


def test_reingest_is_idempotent_and_a_new_version_replaces_figures(db_url: str, shared_data: Path,
                                                                   tmp_path: Path) -> None:
    src = shared_data / "jats" / "elife-19405"
    folder = tmp_path / "elife-19405"
    shutil.copytree(src, folder)
    engine, factory = factory_for(db_url)
    home = tmp_path / "home"
    first = ingest_paths([folder], factory, home, limits=LIMITS, progress=False)
    ids_before = {f.id for figs in _figures_by_article(factory).values() for f in figs}
    media_before = sorted(p.name for p in (home / "media").rglob("*"))

    second = ingest_paths([folder, shared_data / "jats" / "packages" / "elife-19405.tar.gz"], factory, home,
                          limits=LIMITS, progress=False)
    assert second.count("unchanged") == 2 and second.article_ids == [] and second.figures == 0
    assert {f.id for figs in _figures_by_article(factory).values() for f in figs} == ids_before
    assert sorted(p.name for p in (home / "media").rglob("*")) == media_before

    xml = folder / "elife-19405.nxml"
    xml.write_bytes(xml.read_bytes().replace(b"Membrane invaginations", b"Revised invaginations"))
    third = ingest_paths([folder], factory, home, limits=LIMITS, progress=False)
    assert third.count("replaced") == 1 and third.article_ids == first.article_ids
    assert set(third.removed_figure_ids) == ids_before
    figures = _figures_by_article(factory)["doi:10.7554/elife.19405"]
    assert len(figures) == 1
    assert figures[0].caption.startswith("Revised invaginations")
    engine.dispose()


def test_fake_jpeg_in_package_is_reported_and_real_figures_ingest(sqlite_url: str, shared_data: Path,
                                                                  tmp_path: Path) -> None:
    pkg = shared_data / "jats" / "malformed" / "packages" / "pone.0060593.tar.gz"
    engine, factory = factory_for(sqlite_url)
    report = ingest_paths([pkg], factory, tmp_path / "home", limits=LIMITS, progress=False)
    engine.dispose()
    assert not report.failed
    assert report.figures == 2 and report.images_stored == 2
    assert [(s.item, s.reason) for s in report.skipped] == [
        ("pone.0060593.t003.jpg", "not an image (unrecognised file content)")
    ]


def test_xml_only_and_entity_xml_ingest_as_caption_only(sqlite_url: str, shared_data: Path,
                                                        tmp_path: Path) -> None:
    engine, factory = factory_for(sqlite_url)
    paths = [shared_data / "jats" / "xml-only", shared_data / "jats" / "malformed" / "pone.0056489.xml.orig"]
    report = ingest_paths(paths, factory, tmp_path / "home", limits=LIMITS, progress=False)
    engine.dispose()
    assert not report.failed
    assert report.count("added") == 5
    assert report.figures == 4 + 0 + 3 + 4 + 3 and report.images_stored == 0
    assert {s.reason for s in report.skipped} == {"image not found"}


def test_jsonl_manifest_groups_cases_and_keeps_metadata(db_url: str, shared_data: Path, tmp_path: Path) -> None:
    medpix = shared_data / "medpix"
    lines = (medpix / "train.jsonl").read_text().splitlines()[:12]
    target = tmp_path / "medpix"
    (target / "images").mkdir(parents=True)
    for line in lines:
        image = json.loads(line)["image"]
        shutil.copy(medpix / image, target / image)
    (target / "train.jsonl").write_text("\n".join(lines) + "\n")
    cases = {json.loads(line)["case_id"] for line in lines}
    engine, factory = factory_for(db_url)
    report = ingest_paths([target / "train.jsonl"], factory, tmp_path / "home", limits=LIMITS, progress=False)
    again = ingest_paths([target], factory, tmp_path / "home", limits=LIMITS, progress=False)
    rows = _figures_by_article(factory)
    engine.dispose()
    assert report.count("added") == len(cases) and report.images_stored == 12
    assert again.count("unchanged") == len(cases) and again.figures == 0
    first = json.loads(lines[0])
    figures = rows[f"manifest:medpix/train#{first['case_id']}"]
    assert figures[0].key == first["id"] and figures[0].caption == " ".join(first["caption"].split())
    assert figures[0].extra["modality"] == first["modality"] and "image" not in figures[0].extra


def test_cli_ingest_prints_the_summary_and_fails_on_refusals(shared_data: Path, tmp_path: Path) -> None:
    from app.cli import cli

    env = {"BIOMEDSEARCH_DATA_HOME": str(tmp_path / "home")}
    runner = CliRunner()
    ok = runner.invoke(cli, ["ingest", "--no-progress", str(shared_data / "jats" / "elife-00353")], env=env)
    assert ok.exit_code == 0, ok.output
    assert "ingest: 1 articles (1 added" in ok.output
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.nxml").write_bytes(article_xml(fig("f1", "a")).replace(b"<body>", b"<body><p>&bogus;</p>"))
    (folder / "a.jpg").write_bytes(jpeg_bytes())
    bad = runner.invoke(cli, ["ingest", "--no-progress", str(folder)], env=env)
    assert bad.exit_code == 1
    assert "bogus" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(cli, ["ingest", str(tmp_path / "nope")], env=env)
    assert missing.exit_code == 2 and "no such file" in " ".join(missing.output.split())
