"""Text search modes through the API: hybrid (default), dense and lexical, with match details.

Real catalogue (two JATS articles from the shared data), real full-text index and real FAISS
indexes; the encoder is the deterministic test double (ranking by the dense channels is not what
is asserted here, only which channels take part and what the lexical matches say).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_fixtures import HashEncoder, build_home, make_settings
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

PACKAGES = ("elife-00353", "elife-19405", "pone.0056489", "2236-8906-hoehnea-49-e1112020")


def _build(home: Path, shared_data: Path, encoder: HashEncoder, *, index: bool) -> Settings:
    settings = make_settings(home, model="stub")
    packages = [shared_data / "jats" / "packages" / f"{name}.tar.gz" for name in PACKAGES]
    build_home(settings, packages, encoder if index else None)
    return settings


@pytest.fixture(scope="module")
def encoder() -> HashEncoder:
    return HashEncoder()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, encoder: HashEncoder) -> Iterator[TestClient]:
    settings = _build(tmp_path_factory.mktemp("modes") / "home", shared_data, encoder, index=True)
    with TestClient(create_app(settings, encoder_loader=lambda spec, device: encoder)) as c:
        yield c


def _same_stem(a: str, b: str) -> bool:
    return a.lower()[:6] == b.lower()[:6]


def _a_caption_word(client: TestClient) -> tuple[str, int, str]:
    """A distinctive word from some figure's caption: (word, figure id, article journal)."""
    found = client.get("/api/search", params={"q": "figure", "mode": "lexical", "k": 50}).json()["results"]
    assert found, "the lexical index should match the word 'figure'"
    for hit in found:
        for word in hit["caption"].split():
            word = word.strip(".,;:()[]").lower()
            if len(word) > 9 and word.isalpha():
                return word, hit["id"], hit["article"]["journal"]
    raise AssertionError("no long caption word found")


def test_default_mode_is_hybrid_and_fuses_all_three_channels(client: TestClient) -> None:
    word, fig_id, _ = _a_caption_word(client)
    body = client.get("/api/search", params={"q": word, "k": 10}).json()
    assert body["mode"] == "hybrid"
    assert body["channels"] == ["lexical", "image", "caption"]
    assert body["indexed"] > 0
    ids = [hit["id"] for hit in body["results"]]
    assert fig_id in ids, "a figure whose caption holds the query word is in the hybrid top 10"
    hit = body["results"][ids.index(fig_id)]
    assert "lexical" in hit["match"]["channels"] and hit["match"]["ranks"]["lexical"] >= 1
    # terms are the words as found (stemmed match: "relationships" finds "relationship")
    assert any(_same_stem(t, word) for t in hit["match"]["terms"])
    assert any(_same_stem(t, word) for t in hit["match"]["where"]["caption"])
    # every result says why it is there, and ranks are consecutive
    assert all(h["match"]["channels"] for h in body["results"])
    assert [h["rank"] for h in body["results"]] == list(range(1, len(ids) + 1))


def test_lexical_mode_matches_only_by_words(client: TestClient) -> None:
    word, _, _ = _a_caption_word(client)
    body = client.get("/api/search", params={"q": word, "mode": "lexical"}).json()
    assert body["mode"] == "lexical" and body["channels"] == ["lexical"]
    assert body["results"] and body["results"][0]["match"]["channels"] == ["lexical"]
    for hit in body["results"]:
        where = hit["match"]["where"]
        assert where and set(where) <= {"caption", "mention", "title", "label"}
        shown = {"caption": hit["caption"], "label": hit["label"] or "", "title": hit["article"]["title"] or ""}
        for field, terms in where.items():
            assert all(_same_stem(t, word) for t in terms)
            if field in shown:  # mentions are not in the search response; the rest must hold the term
                assert all(t.lower() in shown[field].lower() for t in terms), (field, terms)
    nothing = client.get("/api/search", params={"q": "zzzqxj unmatchable", "mode": "lexical"}).json()
    assert nothing["results"] == []


def test_dense_mode_is_the_image_index_alone(client: TestClient) -> None:
    word, _, _ = _a_caption_word(client)
    body = client.get("/api/search", params={"q": word, "mode": "dense", "k": 5}).json()
    assert body["mode"] == "dense" and body["channels"] == ["image"]
    assert body["indexed"] > 0 and len(body["results"]) == min(5, body["indexed"])
    assert all(hit["match"] is None for hit in body["results"])


def test_hybrid_applies_filters(client: TestClient) -> None:
    word, _, journal = _a_caption_word(client)
    body = client.get("/api/search", params={"q": word, "journal": journal.upper(), "k": 20}).json()
    assert body["results"] and all(h["article"]["journal"] == journal for h in body["results"])
    none = client.get("/api/search", params={"q": word, "year_from": 2990}).json()
    assert none["results"] == []


def test_paging_is_consistent_in_hybrid(client: TestClient) -> None:
    first = client.get("/api/search", params={"q": "cells figure", "k": 6}).json()["results"]
    second = client.get("/api/search", params={"q": "cells figure", "k": 3, "offset": 3}).json()["results"]
    assert len(first) == 6
    assert [h["id"] for h in first[3:]] == [h["id"] for h in second]
    assert [h["rank"] for h in second] == [4, 5, 6]


def test_without_an_encoder_hybrid_is_lexical_and_dense_is_503(tmp_path: Path, shared_data: Path) -> None:
    settings = _build(tmp_path / "home", shared_data, HashEncoder(), index=False)
    settings = make_settings(settings.data_home, model=None)
    with TestClient(create_app(settings)) as c:
        body = c.get("/api/search", params={"q": "figure"}).json()
        assert body["mode"] == "hybrid" and body["channels"] == ["lexical"] and body["results"]
        dense = c.get("/api/search", params={"q": "figure", "mode": "dense"})
        assert dense.status_code == 503 and dense.json()["error"]["status"] == 503


def test_worker_keeps_the_sentence_caption_index_in_step(tmp_path: Path, shared_data: Path) -> None:
    """With ``text_model`` set, a re-index job embeds captions with the sentence encoder (the real
    bundled all-MiniLM-L6-v2) and publishes its caption index; hybrid search then uses it."""
    from app.jobs import Worker, enqueue
    from indexer.catalogue import Figure, make_engine, make_session_factory, migrate
    from indexer.publish import LiveIndexes
    from training.sentence_encoder import load_sentence_encoder

    home = tmp_path / "home"
    settings = make_settings(home, model="stub", text_model="minilm")
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    factory = make_session_factory(engine)
    clip = HashEncoder()
    minilm = load_sentence_encoder("minilm", device="cpu")
    uploads = home / "uploads" / "t1"  # jobs may only read files under uploads/ and downloads/
    uploads.mkdir(parents=True)
    packages = [
        str(shutil.copy(shared_data / "jats" / "packages" / f"{name}.tar.gz", uploads)) for name in PACKAGES[:2]
    ]
    enqueue(factory, "ingest", {"paths": packages})
    worker = Worker(settings, factory, lambda: clip, text_encoder_provider=lambda: minilm)
    assert worker.run_once() is not None
    with factory() as s:
        captions = s.query(Figure).filter(Figure.caption != "").count()
    live = LiveIndexes(settings.index_dir, minilm.model_id, use_gpu=False)
    live.refresh()
    assert captions > 0 and live.ntotal("caption") == captions
    engine.dispose()

    with TestClient(create_app(settings, encoder_loader=lambda spec, device: clip)) as c:
        body = c.get("/api/search", params={"q": "a good life"}).json()
        assert body["channels"] == ["lexical", "image", "caption"]
        assert any("caption" in hit["match"]["channels"] for hit in body["results"])
