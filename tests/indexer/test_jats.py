"""JATS parsing: ids, metadata, every <fig> with a clean caption, sections, mentions, entities."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from ingest_fixtures import article_xml, fig, manifest_entries

from indexer.jats import JatsError, license_label, parse_jats, parse_jats_file


def _xml_path(jats: Path, entry_id: str) -> Path:
    return jats / entry_id / f"{entry_id}.nxml"


def test_every_shared_article_parses_with_all_its_figures(shared_data: Path) -> None:
    jats = shared_data / "jats"
    for entry_id, entry in manifest_entries(jats).items():
        record = parse_jats_file(_xml_path(jats, entry_id))
        assert len(record.figures) == entry["figures"], entry_id
        assert record.title, entry_id
        for figure in record.figures:
            assert figure.caption, (entry_id, figure.key_base)
            assert "  " not in figure.caption and "\n" not in figure.caption
            assert not re.search(r"</?[a-z-]+[ />]", figure.caption), (entry_id, figure.caption)
            assert figure.hrefs, (entry_id, figure.key_base)


def test_metadata_of_real_articles(shared_data: Path) -> None:
    jats = shared_data / "jats"
    elife = parse_jats_file(_xml_path(jats, "elife-19405"))
    assert elife.doi == "10.7554/eLife.19405"
    assert elife.key("x") == "doi:10.7554/elife.19405"
    assert (elife.journal, elife.year, elife.license) == ("eLife", 2016, "CC BY 4.0")
    assert elife.license_url == "http://creativecommons.org/licenses/by/4.0/"

    texture = parse_jats_file(_xml_path(jats, "elife-32671"))  # no ids, no journal-meta, no permissions
    assert (texture.pmcid, texture.doi, texture.pmid, texture.license) == (None, None, None, None)
    assert texture.key("elife-32671") == "file:elife-32671"

    plos = parse_jats_file(_xml_path(jats, "pone.0056489"))
    assert plos.license == "CC BY" and plos.license_url is None  # prose license without a URL
    assert plos.figures[0].hrefs == ["info:doi/10.1371/journal.pone.0056489.g001"]

    hoehnea = parse_jats_file(_xml_path(jats, "2236-8906-hoehnea-49-e1112020"))
    assert hoehnea.lang == "pt"
    assert hoehnea.figures[0].fig_id is None and hoehnea.figures[0].key_base == "fig-1"
    assert hoehnea.figures[1].key_base == "f2"

    assert parse_jats_file(_xml_path(jats, "elife-00353")).figures[0].label is None

    pmc = parse_jats_file(shared_data / "jats" / "xml-only" / "ehp-116-1694.nxml")
    assert (pmc.pmcid, pmc.pmid) == ("PMC2599765", "19079722")
    assert pmc.key("x") == "pmcid:PMC2599765"
    assert pmc.license == "Public Domain Mark 1.0"
    assert {f.section for f in pmc.figures} == {"floats-group"}


def test_xml_only_figure_counts(shared_data: Path) -> None:
    folder = shared_data / "jats" / "xml-only"
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        record = parse_jats_file(folder / entry["file"] if "file" in entry else folder / entry["id"])
        assert len(record.figures) == entry["figures"]


def test_caption_is_title_then_paragraphs_with_markup_flattened(shared_data: Path) -> None:
    record = parse_jats_file(_xml_path(shared_data / "jats", "elife-19405"))
    caption = record.figures[0].caption
    assert caption.startswith("Membrane invaginations and cell division. Schematic diagram")
    assert record.figures[0].caption_title == "Membrane invaginations and cell division."


def test_dtd_character_entities_are_mapped_to_unicode(shared_data: Path) -> None:
    orig = parse_jats_file(shared_data / "jats" / "malformed" / "pone.0056489.xml.orig")
    clean = parse_jats_file(_xml_path(shared_data / "jats", "pone.0056489"))
    assert orig.title == clean.title
    assert len(orig.figures) == 3
    assert {"ast", "hairsp", "equals", "lsqb", "khgr"} <= set(orig.substituted_entities)
    assert orig.figures[0].caption == clean.figures[0].caption


def test_unknown_entity_is_refused_naming_it() -> None:
    xml = article_xml("<p>a &notanentityname; b</p>")
    with pytest.raises(JatsError, match="notanentityname"):
        parse_jats(xml)


def test_not_an_article_is_refused() -> None:
    with pytest.raises(JatsError, match="not <article>"):
        parse_jats(b"<?xml version='1.0'?><html><body/></html>")
    with pytest.raises(JatsError, match="malformed"):
        parse_jats(b"<article><front></article>")


def test_figure_sections_tables_and_multi_graphic_figures() -> None:
    body = (
        "<sec><p>Intro.</p>" + fig("f1", "one") + "</sec>"
        "<boxed-text>" + fig("f2", "two") + "</boxed-text>"
        '<table-wrap id="t1"><graphic xlink:href="table1"/></table-wrap>'
        '<fig-group id="g1">' + fig("f3", ["three-a", "three-b"]) + fig("f4", "four") + "</fig-group>"
        '<fig id="nograph"><caption><p>Only words.</p></caption></fig>'
    )
    back = (
        "<app-group><app>" + fig("f5", "five") + "</app></app-group>"
        '<sec><supplementary-material id="s1">' + fig("f6", "six") + "</supplementary-material></sec>"
    )
    record = parse_jats(article_xml(body, back=back))
    by_id = {f.fig_id: f for f in record.figures}
    assert list(by_id) == ["f1", "f2", "f3", "f4", "nograph", "f5", "f6"]
    assert [by_id[i].section for i in ("f1", "f2", "f5", "f6")] == ["body", "boxed-text", "app", "supplementary"]
    assert by_id["f3"].hrefs == ["three-a", "three-b"]
    assert by_id["nograph"].hrefs == [] and by_id["nograph"].caption == "Only words."
    assert "table1" in record.media_hrefs and all("table1" not in f.hrefs for f in record.figures)
    assert (record.year, record.license, record.journal) == (2020, "CC BY-NC 4.0", "Test Journal")


def test_mentions_are_the_citing_sentences() -> None:
    body = (
        "<p>Cells were grown. Growth doubled in <italic>E. coli</italic> after 2 h "
        '(<xref ref-type="fig" rid="f1">Fig. 1A</xref>). Nothing else happened.</p>'
        '<p>See also the group (<xref ref-type="fig" rid="g1">Figs. 2-3</xref>) and Fig. 1.</p>'
        '<fig-group id="g1">' + fig("f2", "b") + fig("f3", "c") + "</fig-group>" + fig("f1", "a")
    )
    record = parse_jats(article_xml(body))
    by_id = {f.fig_id: f for f in record.figures}
    assert by_id["f1"].mentions == ["Growth doubled in E. coli after 2 h (Fig. 1A)."]
    assert by_id["f2"].mentions == ["See also the group (Figs. 2-3) and Fig. 1."]
    assert by_id["f3"].mentions == by_id["f2"].mentions


def test_license_labels() -> None:
    assert license_label("http://creativecommons.org/licenses/by-nc-nd/3.0/", None) == "CC BY-NC-ND 3.0"
    assert license_label("https://creativecommons.org/publicdomain/zero/1.0/", None) == "CC0 1.0"
    assert license_label(None, "distributed under the Creative Commons Attribution License") == "CC BY"
    assert license_label(None, "All rights reserved.") is None
