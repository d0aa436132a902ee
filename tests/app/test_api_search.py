"""End to end over every read endpoint: real tiny encoder, real ingest of 4 shared-data articles,
real FAISS indexes, the real app."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_fixtures import make_settings
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from app.main import create_app
from indexer.catalogue import Article, Figure, make_engine, make_session_factory


@pytest.fixture(scope="module")
def home(built_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    dest = tmp_path_factory.mktemp("search") / "home"
    shutil.copytree(built_home, dest)
    return dest


@pytest.fixture(scope="module")
def client(home: Path, tiny_model_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(home, model=f"local-dir:{tiny_model_dir}")
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def catalogue(home: Path) -> dict[int, tuple[Figure, Article]]:
    engine = make_engine(f"sqlite:///{home / 'catalogue.db'}")
    with make_session_factory(engine)() as s:
        rows = {f.id: (f, a) for f, a in s.execute(select(Figure, Article).join(Article))}
    engine.dispose()
    return rows


def test_ready_with_model_and_indexes(client: TestClient, catalogue: dict) -> None:
    body = client.get("/readyz").json()
    with_images = sum(1 for f, _ in catalogue.values() if f.image_path)
    assert body["ready"] is True and body["reasons"] == []
    assert body["indexes"] == {"image": with_images, "caption": len(catalogue)}
    assert body["model_id"]


def test_text_search_ranks_figures_with_article_links(client: TestClient, catalogue: dict) -> None:
    resp = client.get("/api/search", params={"q": "confocal microscopy of neurons", "k": 5})
    assert resp.status_code == 200
    body = resp.json()
    results = body["results"]
    assert len(results) == 5 and body["indexed"] == sum(1 for f, _ in catalogue.values() if f.image_path)
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    for r in results:
        fig, art = catalogue[r["id"]]
        assert r["caption"] == fig.caption and r["label"] == fig.label
        assert r["image_url"] == f"/api/figures/{fig.id}/image"
        assert r["article"]["title"] == art.title and r["article"]["journal"] == art.journal
        expected = f"https://pmc.ncbi.nlm.nih.gov/articles/{art.pmcid}/" if art.pmcid else f"https://doi.org/{art.doi}"
        assert r["article"]["url"] == expected


def test_pages_are_slices_of_one_ranking(client: TestClient) -> None:
    q = {"q": "bar chart of expression levels"}
    full = [r["id"] for r in client.get("/api/search", params={**q, "k": 6}).json()["results"]]
    page2 = client.get("/api/search", params={**q, "k": 3, "offset": 3}).json()["results"]
    assert [r["id"] for r in page2] == full[3:6] and [r["rank"] for r in page2] == [4, 5, 6]
    past_end = client.get("/api/search", params={**q, "k": 10, "offset": 500}).json()
    assert past_end["results"] == []


def test_filters_by_journal_year_and_license(client: TestClient, catalogue: dict) -> None:
    def ids(**params: object) -> set[int]:
        resp = client.get("/api/search", params={"q": "figure", "k": 100, **params})
        assert resp.status_code == 200
        return {r["id"] for r in resp.json()["results"]}

    indexed = {fid for fid, (f, _) in catalogue.items() if f.image_path}
    plos = {fid for fid in indexed if catalogue[fid][1].journal == "PLoS ONE"}
    assert plos and ids(journal="plos one") == plos
    year = catalogue[next(iter(plos))][1].year
    assert year is not None
    in_year = {fid for fid in indexed if catalogue[fid][1].year == year}
    assert ids(year_from=year, year_to=year) == in_year
    assert ids(year_from=year + 1) == {fid for fid in indexed if (catalogue[fid][1].year or 0) > year}
    lic = catalogue[next(iter(plos))][1].license
    assert ids(license=lic) == {fid for fid in indexed if catalogue[fid][1].license == lic}
    assert ids(journal="No Such Journal") == set()
    # a filtered page is cut after filtering: k=1 gives the best PLOS figure
    best = client.get("/api/search", params={"q": "figure", "k": 1, "journal": "PLoS ONE"}).json()["results"]
    assert len(best) == 1 and best[0]["id"] in plos


def test_image_search_finds_the_figure_itself_and_its_caption(client: TestClient, catalogue: dict, home: Path) -> None:
    fid = next(fid for fid, (f, _) in sorted(catalogue.items()) if f.image_path)
    image = client.get(f"/api/figures/{fid}/image")
    assert image.status_code == 200 and image.headers["content-type"] in ("image/jpeg", "image/png")
    assert image.content == (home / catalogue[fid][0].image_path).read_bytes()
    same = client.post("/api/search/image", files={"file": ("q.jpg", image.content)}, data={"mode": "image", "k": "3"})
    assert same.status_code == 200, same.text
    top = same.json()["results"][0]
    assert top["id"] == fid and top["score"] > 0.99
    captions = client.post("/api/search/image", files={"file": ("q.jpg", image.content)}, data={"k": "4"}).json()
    assert captions["mode"] == "text" and len(captions["results"]) == 4
    assert captions["indexed"] == len(catalogue)  # the caption index holds every figure, image or not


def test_similar_figures_exclude_the_figure(client: TestClient, catalogue: dict) -> None:
    fid = next(fid for fid, (f, _) in sorted(catalogue.items()) if f.image_path)
    body = client.get(f"/api/figures/{fid}/similar", params={"k": 4}).json()
    ids = [r["id"] for r in body["results"]]
    assert fid not in ids and len(ids) == 4
    caption_only = [fid for fid, (f, _) in catalogue.items() if not f.image_path]
    if caption_only:
        resp = client.get(f"/api/figures/{caption_only[0]}/similar")
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "not_embedded"


def test_figure_thumbnail_and_article(client: TestClient, catalogue: dict) -> None:
    fid, (fig, art) = next((i, fa) for i, fa in sorted(catalogue.items()) if fa[0].image_path)
    body = client.get(f"/api/figures/{fid}").json()
    assert body["id"] == fid and body["has_image"] and body["width"] == fig.width
    assert body["article"]["id"] == art.id
    thumb = client.get(f"/api/figures/{fid}/thumbnail")
    assert thumb.status_code == 200
    with Image.open(io.BytesIO(thumb.content)) as im:
        assert max(im.size) <= 320
    article = client.get(f"/api/articles/{art.id}").json()
    mine = [f for f, a in catalogue.values() if a.id == art.id]
    assert [f["id"] for f in article["figures"]] == [f.id for f in sorted(mine, key=lambda f: f.position)]
    assert article["title"] == art.title and article["license"] == art.license
