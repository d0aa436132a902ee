"""``GET /api/figures/{id}`` and its image, thumbnail and similar figures."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from app.api.deps import SearchDep, SessionDep, SettingsDep
from app.api.routes._common import ERRORS, MAX_ID, NOT_READY, check_depth, search_response
from app.middleware import ApiError
from app.schemas import MAX_K, FigureOut, SearchResponse, figure_out
from indexer.catalogue import Figure
from indexer.filters import Filters

router = APIRouter(prefix="/api/figures", tags=["figures"], responses=ERRORS)

FigureId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="Figure id.")]
_IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image file",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _figure(session: Session, figure_id: int) -> Figure:
    fig = session.get(Figure, figure_id)
    if fig is None:
        raise ApiError(404, f"figure {figure_id} not found")
    return fig


def _media(data_home: Path, rel: str | None, figure_id: int, what: str, *, private: bool) -> FileResponse:
    """A FileResponse for a media path relative to the data home (404 if absent or outside it).

    Media never change under a path (content-hashed), so they are cacheable for a day; ``private``
    (reads need a key) keeps them out of shared caches and proxies."""
    if not rel:
        raise ApiError(404, f"figure {figure_id} has no {what}")
    home = data_home.resolve()
    path = (home / rel).resolve()
    if not path.is_relative_to(home) or not path.is_file():
        raise ApiError(404, f"the {what} of figure {figure_id} is missing from the media store")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    scope = "private" if private else "public"
    headers = {"Cache-Control": f"{scope}, max-age=86400, immutable"}
    if private:
        headers["Vary"] = "X-API-Key"
    return FileResponse(path, media_type=media_type, headers=headers)


@router.get("/{figure_id}", response_model=FigureOut, summary="One figure with its article")
def get_figure(figure_id: FigureId, session: SessionDep) -> FigureOut:
    """The figure's caption, media URLs and article."""
    fig = _figure(session, figure_id)
    return figure_out(fig, fig.article)


@router.get(
    "/{figure_id}/image",
    response_class=FileResponse,
    responses=_IMAGE_RESPONSE,
    summary="The figure's image (normalised RGB JPEG or PNG)",
)
def get_image(figure_id: FigureId, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """Stream the stored image."""
    return _media(settings.data_home, _figure(session, figure_id).image_path, figure_id, "image",
                  private=settings.read_api_key is not None)


@router.get(
    "/{figure_id}/thumbnail",
    response_class=FileResponse,
    responses=_IMAGE_RESPONSE,
    summary="The figure's thumbnail (JPEG)",
)
def get_thumbnail(figure_id: FigureId, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """Stream the stored thumbnail."""
    return _media(settings.data_home, _figure(session, figure_id).thumb_path, figure_id, "thumbnail",
                  private=settings.read_api_key is not None)


@router.get(
    "/{figure_id}/similar",
    response_model=SearchResponse,
    summary="Figures with similar images",
    responses={409: ERRORS[404] | {"description": "The figure has no image embedding"}, **NOT_READY},
)
def similar(
    figure_id: FigureId,
    search: SearchDep,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    offset: Annotated[int, Query(ge=0, le=999)] = 0,
) -> Response:
    """Nearest figures by image embedding (the figure itself excluded)."""
    check_depth(k, offset)
    page = search.similar(figure_id, k, offset, Filters())
    return search_response(page, k=k, offset=offset)
