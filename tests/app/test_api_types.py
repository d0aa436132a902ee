"""Figure types, the multi-panel flag and facets through the API, over a data home built by the real
pipeline (ingest -> embed -> label -> publish) from the shared JATS packages; the encoder is the
deterministic test double, so the labels come mostly from the captions. What is asserted is that the
API's filters and counts agree with the catalogue, whatever the labels are."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_fixtures import HashEncoder, build_home, jpeg_bytes, make_settings
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.main import create_app
from indexer.catalogue import Figure, open_database
from indexer.vocabulary import FigureGroup, FigureType

PACKAGES = ("elife-32671", "elife-19405", "pone.0056489", "2236-8906-hoehnea-49-e1112020",
            "1414-431X-bjmbr-37-04-459-477", "2024.01.24.24301711")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    home = tmp_path_factory.mktemp("types") / "home"
    build_home(make_settings(home, model="stub"), [shared_data / "jats" / "packages" / f"{p}.tar.gz"
                                                  for p in PACKAGES], HashEncoder())
    return home


@pytest.fixture(scope="module")
def client(home: Path) -> Iterator[TestClient]:
    encoder = HashEncoder()
    with TestClient(create_app(make_settings(home, model="stub"), encoder_loader=lambda spec, device: encoder)) as c:
        yield c


@pytest.fixture(scope="module")
def catalogue(home: Path) -> dict[int, tuple[str | None, bool | None]]:
    """Figure id -> (type, multi-panel) as the catalogue holds them."""
    with open_database(f"sqlite:///{home / 'catalogue.db'}", migrate_schema=False) as db, db.session_factory() as s:
        return {f.id: (f.figure_type, f.multipanel) for f in s.scalars(select(Figure))}


def _search(client: TestClient, **params: Any) -> dict[str, Any]:
    resp = client.get("/api/search", params={"k": 100, **params})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_every_figure_is_labelled_and_the_figure_endpoint_shows_type_confidence_and_flag(
    client: TestClient, catalogue: dict[int, tuple[str | None, bool | None]]
) -> None:
    assert catalogue and all(kind is not None and flag is not None for kind, flag in catalogue.values())
    assert len({kind for kind, _ in catalogue.values()}) >= 2  # charts, diagrams... not one type for all
    for fid, (kind, flag) in catalogue.items():
        body = client.get(f"/api/figures/{fid}").json()
        assert body["figure_type"]["value"] == kind and body["multipanel"] is flag
        assert body["figure_type"]["label"] == FigureType(kind).label
        assert body["figure_type"]["group"] == FigureType(kind).group.value
        assert 0.0 < body["figure_type"]["confidence"] <= 1.0
        assert body["figure_type"]["model_id"] == HashEncoder.model_id
        assert body["multipanel_evidence"] in ("caption", "image", "both", "none")
        assert (body["multipanel_evidence"] != "none") is flag


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_a_type_filter_returns_every_figure_of_that_type_and_nothing_else(
    client: TestClient, catalogue: dict[int, tuple[str | None, bool | None]], mode: str
) -> None:
    everything = {h["id"] for h in _search(client, q="figure cells data", mode=mode)["results"]}
    for kind in {k for k, _ in catalogue.values()}:
        body = _search(client, q="figure cells data", mode=mode, type=kind)
        got = [h["id"] for h in body["results"]]
        assert all(h["figure_type"]["value"] == kind for h in body["results"])
        # applied inside the search: all of the type among what the unfiltered query reaches, not a cut page
        reached = {i for i in everything if catalogue[i][0] == kind}
        assert set(got) == reached, kind
        short = _search(client, q="figure cells data", mode=mode, type=kind, k=3)["results"]
        assert len(short) == min(3, len(reached))  # a short page is filled, not what is left of 3 hits


def test_a_group_selects_its_types_and_multipanel_false_keeps_single_panels(
    client: TestClient, catalogue: dict[int, tuple[str | None, bool | None]]
) -> None:
    graphics = {t.value for t in FigureGroup.GRAPHICS.types}
    body = _search(client, q="figure", mode="dense", type="graphics")
    assert {h["id"] for h in body["results"]} == {i for i, (k, _) in catalogue.items() if k in graphics}
    both = _search(client, q="figure", mode="dense", type=["chart", "diagram"])
    assert {h["figure_type"]["value"] for h in both["results"]} <= {"chart", "diagram"}
    single = _search(client, q="figure", mode="dense", multipanel="false", k=5)
    assert len(single["results"]) == min(5, sum(1 for _, flag in catalogue.values() if not flag))
    assert all(h["multipanel"] is False for h in single["results"])


def test_facets_count_the_candidates_and_ignore_their_own_filter(
    client: TestClient, catalogue: dict[int, tuple[str | None, bool | None]]
) -> None:
    plain = _search(client, q="figure", mode="dense", facets="type,year,journal,license")
    hits = plain["results"]  # every figure: the index is smaller than k and than the facet candidate set
    assert plain["facet_candidates"] == len(hits) == len(catalogue)
    types = {f["value"]: f["count"] for f in plain["facets"]["type"]}
    assert types == dict(Counter(h["figure_type"]["value"] for h in hits))
    assert {f["value"]: f["count"] for f in plain["facets"]["journal"]} == dict(
        Counter(h["article"]["journal"] for h in hits if h["article"]["journal"])
    )
    assert all(f["label"] == FigureType(f["value"]).label for f in plain["facets"]["type"])
    kind = max(types, key=lambda k: types[k])
    picked = _search(client, q="figure", mode="dense", type=kind, facets=["type", "year"])
    assert {f["value"]: f["count"] for f in picked["facets"]["type"]} == types  # its own filter is ignored
    assert {f["value"]: f["count"] for f in picked["facets"]["year"]} == dict(
        Counter(h["article"]["year"] for h in picked["results"] if h["article"]["year"])
    )
    assert "facets" not in plain["results"][0] and _search(client, q="figure")["facets"] is None


def test_image_search_takes_the_same_filters_and_facets(
    client: TestClient, catalogue: dict[int, tuple[str | None, bool | None]]
) -> None:
    kind = Counter(k for k, _ in catalogue.values()).most_common(1)[0][0]
    resp = client.post(
        "/api/search/image",
        files={"file": ("q.jpg", jpeg_bytes(), "image/jpeg")},
        data={"mode": "image", "k": "50", "type": kind, "facets": "type"},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert {h["id"] for h in body["results"]} == {i for i, (k, _) in catalogue.items() if k == kind}
    assert body["facets"]["type"] and body["facet_candidates"] == len(catalogue)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"type": "xrays"}, "unknown figure type"),
        ({"facets": "type,colour"}, "unknown facet"),
        ({"multipanel": "maybe"}, ""),
    ],
)
def test_unknown_types_and_facets_are_refused_with_422(
    client: TestClient, params: dict[str, str], message: str
) -> None:
    resp = client.get("/api/search", params={"q": "figure", **params})
    assert resp.status_code == 422
    assert message in resp.json()["error"]["message"]
