"""What several routers share: the documented error responses, paging checks, hit conversion."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from app.middleware import ApiError
from app.pager import Page
from app.ranking import describe
from app.schemas import MAX_DEPTH, ErrorResponse, FigureHit, Match, SearchResponse, facet_counts_out, figure_fields
from indexer.facets import check_facets
from indexer.filters import Filters
from indexer.vocabulary import figure_types

_ERROR = {"model": ErrorResponse}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_ERROR, "description": "Malformed request"},
    401: {**_ERROR, "description": "Missing or wrong API key"},
    404: {**_ERROR, "description": "Not found"},
    413: {**_ERROR, "description": "Request body over the upload limit"},
    422: {**_ERROR, "description": "Invalid parameters"},
}
NOT_READY: dict[int | str, dict[str, Any]] = {503: {**_ERROR, "description": "The encoder is not loaded"}}

MAX_ID = 2**31 - 1  # ids are 32-bit integers in the catalogue


def check_depth(k: int, offset: int) -> None:
    """422 unless ``offset + k <= MAX_DEPTH``."""
    if offset + k > MAX_DEPTH:
        raise ApiError(422, f"offset + k must be at most {MAX_DEPTH} (got {offset} + {k})")


def check_years(year_from: int | None, year_to: int | None) -> None:
    """422 when the year range is empty."""
    if year_from is not None and year_to is not None and year_from > year_to:
        raise ApiError(422, f"year_from ({year_from}) is after year_to ({year_to})")


def search_filters(
    year_from: int | None,
    year_to: int | None,
    journal: str | None,
    license: str | None,
    types: list[str] | None,
    multipanel: bool | None,
) -> Filters:
    """The :class:`Filters` of a search request; 422 for an empty year range or an unknown figure type
    or group."""
    check_years(year_from, year_to)
    try:
        kinds = figure_types(types or ())
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    return Filters(year_from=year_from, year_to=year_to, journal=journal, license=license, types=kinds,
                   multipanel=multipanel)


def facet_names(facets: list[str] | None) -> tuple[str, ...]:
    """The facets a request asks for (``facets=type,year`` or repeated); 422 for an unknown one."""
    try:
        return check_facets(facets or ())
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


def search_response(page: Page, *, k: int, offset: int, query: str | None = None) -> Response:
    """The API answer for a :class:`Page` (its mode and channels, each hit's match when it has one):
    a :class:`SearchResponse` serialised to JSON by pydantic-core.

    The model is built (and so validated) here, and its JSON returned as a ``Response``: FastAPI
    would otherwise validate the returned model a second time against the route's
    ``response_model`` and encode it again (about 0.3 ms of a search's overhead). The routes keep
    ``response_model=SearchResponse`` for the OpenAPI document; the bytes are the same.
    """
    body = SearchResponse(
        query=query,
        mode=page.mode,
        channels=list(page.channels),
        k=k,
        offset=offset,
        indexed=page.indexed,
        index_version=page.index_version,
        results=[
            FigureHit(
                rank=h.rank,
                score=h.score,
                match=Match(**describe(h.match)) if h.match is not None else None,
                **figure_fields(h.figure, h.article),
            )
            for h in page.hits
        ],
        facets=facet_counts_out(page.facets) if page.facets is not None else None,
        facet_candidates=page.facet_candidates if page.facets is not None else None,
    )
    return Response(body.model_dump_json(), media_type="application/json")
