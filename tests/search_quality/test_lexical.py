"""The lexical index: kept in step by the database on ingest / replace / delete, ranked, safe."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update

from indexer.catalogue import Article, Figure, make_engine, make_session_factory, session_scope
from indexer.filters import Filters
from indexer.ingest import IngestLimits, ingest_paths
from indexer.lexical import lexical_count, query_terms, rebuild_lexical, search_lexical


def _factory(db_url: str):  # type: ignore[no-untyped-def]
    return make_session_factory(make_engine(db_url))


def _ingest(paths: list[Path], factory, data_home: Path) -> None:  # type: ignore[no-untyped-def]
    report = ingest_paths(paths, factory, data_home, limits=IngestLimits(), progress=False)
    assert report.article_ids, report


@pytest.fixture
def xml_only(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "jats" / "xml-only").glob("*.nxml"))


def test_query_terms_never_carry_syntax() -> None:
    assert query_terms('Kidney "AND" NOT (cyst*) OR near/3 the T2-weighted') == [
        "kidney", "not", "cyst", "near", "t2", "weighted",
    ]
    assert query_terms('"" * ( ) : -') == []


def test_index_follows_ingest_replace_and_delete(db_url: str, xml_only: list[Path], tmp_path: Path) -> None:
    factory = _factory(db_url)
    _ingest(xml_only, factory, tmp_path)
    with factory() as session:
        figures = session.scalar(select(text("count(*)")).select_from(Figure))
        assert figures and lexical_count(session) == figures
        # a caption word finds its figure, with where it matched
        fig = session.scalars(select(Figure).where(Figure.caption != "").order_by(Figure.id)).first()
        assert fig is not None
        word = max(query_terms(fig.caption), key=len)
        hits = search_lexical(session, word, 50)
        assert fig.id in [h.figure_id for h in hits]
        hit = next(h for h in hits if h.figure_id == fig.id)
        assert "caption" in hit.where and hit.terms
        assert hits == sorted(hits, key=lambda h: -h.score)

    # replacing an article (same key, new content) re-indexes its figures
    with session_scope(factory) as session:
        session.execute(update(Figure).where(Figure.id == fig.id).values(caption="zebrafish xylophone"))
    with factory() as session:
        hits = search_lexical(session, "xylophone", 5)
        assert [h.figure_id for h in hits] == [fig.id]
        assert hits[0].where == {"caption": ("xylophone",)}
        assert search_lexical(session, word, 50) == [] or fig.id not in [
            h.figure_id for h in search_lexical(session, word, 50)
        ]

    # an article title change reaches its figures; deleting the article removes them
    with session_scope(factory) as session:
        session.execute(update(Article).where(Article.id == fig.article_id).values(title="Quokka anatomy"))
    with factory() as session:
        hits = search_lexical(session, "quokka", 50)
        assert fig.id in [h.figure_id for h in hits]
        assert all(h.where.get("title") == ("quokka",) for h in hits)
    with session_scope(factory) as session:
        session.execute(delete(Article).where(Article.id == fig.article_id))
    with factory() as session:
        assert search_lexical(session, "quokka xylophone", 50) == []
        remaining = session.scalar(select(text("count(*)")).select_from(Figure))
        assert lexical_count(session) == remaining


def test_reingest_of_a_changed_package_replaces_rows(db_url: str, shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "jats" / "xml-only" / "1471-2180-11-174.nxml"
    work = tmp_path / "in" / src.name
    work.parent.mkdir()
    shutil.copyfile(src, work)
    factory = _factory(db_url)
    _ingest([work], factory, tmp_path / "home")
    data = work.read_bytes()
    work.write_bytes(data.replace(b"</caption>", b" Ornithorhynchus.</caption>", 1))
    _ingest([work], factory, tmp_path / "home")
    with factory() as session:
        hits = search_lexical(session, "ornithorhynchus", 10)
        assert len(hits) == 1
        assert session.get(Figure, hits[0].figure_id) is not None
        assert lexical_count(session) == session.scalar(select(text("count(*)")).select_from(Figure))


def test_mentions_and_filters(db_url: str, xml_only: list[Path], tmp_path: Path) -> None:
    factory = _factory(db_url)
    _ingest(xml_only, factory, tmp_path)
    with factory() as session:
        fig = session.scalars(select(Figure).where(Figure.id > 0)).all()
        cited = next(f for f in fig if f.mentions)
        only_there = [
            t for t in query_terms(" ".join(cited.mentions))
            if t not in query_terms(cited.caption + " " + (cited.label or "") + " " + (cited.article.title or ""))
            and len(t) > 4
        ]
        assert only_there
        hits = search_lexical(session, only_there[0], 100)
        hit = next(h for h in hits if h.figure_id == cited.id)
        assert only_there[0] in hit.where["mention"]
        year = cited.article.year
        assert year is not None
        inside = search_lexical(session, only_there[0], 100, Filters(year_from=year, year_to=year))
        assert cited.id in [h.figure_id for h in inside]
        outside = search_lexical(session, only_there[0], 100, Filters(year_from=year + 1))
        assert cited.id not in [h.figure_id for h in outside]


def test_hostile_queries_are_plain_words(db_url: str, xml_only: list[Path], tmp_path: Path) -> None:
    factory = _factory(db_url)
    _ingest(xml_only, factory, tmp_path)
    with factory() as session:
        for q in ['"', "NEAR(a b)", "caption:foo", "'; DROP TABLE figures; --", "a* OR -b", "\x00\x02", "の図"]:
            assert isinstance(search_lexical(session, q, 5), list)
        assert session.scalar(select(text("count(*)")).select_from(Figure))


def test_rebuild_restores_a_cleared_index(db_url: str, xml_only: list[Path], tmp_path: Path) -> None:
    factory = _factory(db_url)
    _ingest(xml_only, factory, tmp_path)
    with session_scope(factory) as session:
        expected = lexical_count(session)
        table = "figure_fts" if session.get_bind().dialect.name == "sqlite" else "figure_lexical"
        session.execute(text(f"DELETE FROM {table}"))
    with session_scope(factory) as session:
        assert lexical_count(session) == 0
        assert rebuild_lexical(session) == expected
    with factory() as session:
        assert lexical_count(session) == expected


def test_figures_with_every_term_rank_first(db_url: str, xml_only: list[Path], tmp_path: Path) -> None:
    """All words first: a figure with both query words outranks one that repeats the rarer word;
    figures with some of the words follow, and ``k`` bounds the whole list."""
    factory = _factory(db_url)
    _ingest(xml_only, factory, tmp_path)
    with session_scope(factory) as session:
        ids = session.scalars(select(Figure.id).order_by(Figure.id).limit(4)).all()
        captions = ["quagga quagga quagga quagga", "Section of a quagga wombat hybrid with many other words around",
                    "wombat", "quagga wombat"]
        for fid, caption in zip(ids, captions, strict=True):
            session.execute(update(Figure).where(Figure.id == fid).values(caption=caption))
    with factory() as session:
        hits = search_lexical(session, "wombat quagga", 10)
        order = [h.figure_id for h in hits]
        assert set(order[:2]) == {ids[1], ids[3]} and set(order[2:]) == {ids[0], ids[2]}
        assert [h.score for h in hits[:2]] == sorted((h.score for h in hits[:2]), reverse=True)  # BM25 within
        assert [h.figure_id for h in search_lexical(session, "wombat quagga", 3)] == order[:3]
        assert [h.figure_id for h in search_lexical(session, "wombat quagga", 1)] == order[:1]
