"""What several routers share: the documented error responses, paging checks, hit conversion."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from app.middleware import ApiError
from app.pager import Page
from app.ranking import describe
from app.schemas import MAX_DEPTH, ErrorResponse, FigureHit, Match, SearchResponse, figure_fields

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
    )
    return Response(body.model_dump_json(), media_type="application/json")
