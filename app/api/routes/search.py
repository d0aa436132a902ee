"""``GET /api/search`` (text -> figures) and ``POST /api/search/image`` (image -> captions / figures)."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from app.api.body_cap import QueryImageRoute
from app.api.deps import SearchDep, ServicesDep, SettingsDep
from app.api.routes._common import ERRORS, NOT_READY, check_depth, facet_names, search_filters, search_response
from app.middleware import ApiError
from app.pager import FACET_CANDIDATES
from app.query_image import decode_query_image
from app.schemas import MAX_K, ErrorResponse, SearchResponse
from indexer.filters import FACETS
from indexer.vocabulary import FigureGroup, FigureType, ImageQueryMode, SearchMode

router = APIRouter(prefix="/api/search", tags=["search"], responses={**ERRORS, **NOT_READY})

# The schema's hard cap on q; the effective limit is Settings.max_query_chars (create_app writes it
# into the OpenAPI document and the route enforces it).
Q_CAP = 100_000

K = Annotated[int, Query(ge=1, le=MAX_K, description="Results per page.")]
Offset = Annotated[int, Query(ge=0, le=999, description="Results to skip; offset + k <= 1000.")]
YearFrom = Annotated[int | None, Query(ge=1000, le=9999, description="Earliest publication year.")]
YearTo = Annotated[int | None, Query(ge=1000, le=9999, description="Latest publication year.")]
# No NUL character: PostgreSQL text cannot hold one (the filter would fail in the database).
NO_NUL = r"^[^\x00]*$"
Journal = Annotated[
    str | None, Query(min_length=1, max_length=500, pattern=NO_NUL, description="Journal title (any case).")
]
License = Annotated[
    str | None, Query(min_length=1, max_length=200, pattern=NO_NUL, description="License, e.g. `CC BY 4.0`.")
]
MAX_TYPES = len(FigureType) + len(FigureGroup)
TYPE_HELP = (
    "Figure types to keep (repeatable; any of them): "
    + ", ".join(f"`{t.value}`" for t in FigureType)
    + "; or a group, which selects its types: "
    + ", ".join(f"`{g.value}`" for g in FigureGroup)
    + ". Figures not yet labelled have no type."
)
MULTIPANEL_HELP = "`false`: single-panel figures only; `true`: multi-panel figures only."
FACETS_HELP = (
    f"Facets to count ({', '.join(FACETS)}; comma-separated or repeated) over the query's best "
    f"{FACET_CANDIDATES} candidates, each with every other filter applied but its own."
)
Types = Annotated[list[str] | None, Query(alias="type", max_length=MAX_TYPES, description=TYPE_HELP)]
Multipanel = Annotated[bool | None, Query(description=MULTIPANEL_HELP)]
Facets = Annotated[list[str] | None, Query(max_length=len(FACETS), description=FACETS_HELP)]


@router.get(
    "",
    response_model=SearchResponse,
    summary="Text -> figures",
    description="Figures that best match the text, best first. `mode=hybrid` (the default, set by "
    "`BIOMEDSEARCH_SEARCH_MODE`) fuses full-text search over caption, mentions, article title and label "
    "with the CLIP image index and a caption index by weighted reciprocal rank fusion; each result's "
    "`match` says which signals found it and which query terms matched where. `mode=dense` is the CLIP "
    "image index alone, `mode=lexical` the full-text index alone. Filters (year range, journal, license, "
    "figure type, multi-panel) are applied in the full-text query and by over-fetching candidates from the "
    "vector indexes (never by dropping results from a page). `facets=type,year,journal,license` adds counts "
    "over the query's candidates. "
    "Before anything is indexed the result list is empty.",
)
def search_text(
    search: SearchDep,
    settings: SettingsDep,
    q: Annotated[
        str,
        Query(min_length=1, max_length=Q_CAP, description="The query text.", examples=["chest CT with contrast"]),
    ],
    k: K = 10,
    offset: Offset = 0,
    year_from: YearFrom = None,
    year_to: YearTo = None,
    journal: Journal = None,
    license: License = None,
    mode: Annotated[
        SearchMode | None,
        Query(description="Ranking: `hybrid` (lexical + dense, fused), `dense` (CLIP) or `lexical`; "
              "default: the service's `search_mode` setting."),
    ] = None,
    types: Types = None,
    multipanel: Multipanel = None,
    facets: Facets = None,
) -> Response:
    """Rank figures for ``q`` in ``mode``, join, filter and page."""
    text = q.strip()
    if not text:
        raise ApiError(422, "q must contain some non-space text")
    if len(text) > settings.max_query_chars:
        raise ApiError(422, f"q is longer than {settings.max_query_chars} characters")
    check_depth(k, offset)
    filters = search_filters(year_from, year_to, journal, license, types, multipanel)
    page = search.search_text(text, k, offset, filters, mode, facet_names(facets))
    return search_response(page, k=k, offset=offset, query=text)


_IMAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Request body over the query-image limit"},
    429: {"model": ErrorResponse, "description": "Over the per-client image-query rate (see Retry-After)"},
    503: {"model": ErrorResponse, "description": "Encoder not loaded, or every decoding slot busy (see Retry-After)"},
}


def search_image(
    search: SearchDep,
    services: ServicesDep,
    file: Annotated[UploadFile, File(description="The query image (JPEG, PNG, GIF, TIFF, BMP or WebP).")],
    k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
    offset: Annotated[int, Form(ge=0, le=999)] = 0,
    mode: Annotated[
        ImageQueryMode,
        Form(description="`text`: rank captions (image->text); `image`: rank figure images."),
    ] = ImageQueryMode.TEXT,
    year_from: Annotated[int | None, Form(ge=1000, le=9999, description="Earliest publication year.")] = None,
    year_to: Annotated[int | None, Form(ge=1000, le=9999, description="Latest publication year.")] = None,
    journal: Annotated[str | None, Form(min_length=1, max_length=500, pattern=NO_NUL)] = None,
    license: Annotated[str | None, Form(min_length=1, max_length=200, pattern=NO_NUL)] = None,
    types: Annotated[list[str] | None, Form(alias="type", max_length=MAX_TYPES, description=TYPE_HELP)] = None,
    multipanel: Annotated[bool | None, Form(description=MULTIPANEL_HELP)] = None,
    facets: Annotated[list[str] | None, Form(max_length=len(FACETS), description=FACETS_HELP)] = None,
) -> Response:
    """Check the image (size, pixel cap), then, holding a decoding slot, decode it without mode
    expansion, encode it and search the caption or image index."""
    check_depth(k, offset)
    filters = search_filters(year_from, year_to, journal, license, types, multipanel)
    wanted = facet_names(facets)
    fh = file.file
    size = fh.seek(0, os.SEEK_END)
    fh.seek(0)
    if size == 0:
        raise ApiError(422, "the uploaded file is empty")
    cap = services.query_images.limits.max_bytes
    if size > cap:
        raise ApiError(413, f"the query image exceeds the limit of {cap} bytes")
    with services.query_images.slot():
        image = decode_query_image(fh, services.query_images.limits.max_pixels)
        page = search.search_image(image, k, offset, mode, filters, wanted)
    return search_response(page, k=k, offset=offset)


router.add_api_route(
    "/image",
    search_image,
    methods=["POST"],
    response_model=SearchResponse,
    summary="Image -> captions (mode=text) or similar figures (mode=image)",
    description="Upload an image: `mode=text` ranks figure captions by their match with the image "
    "(image->text), `mode=image` ranks figure images by similarity (image->image). The text search's "
    "filters (year range, journal, license, `type`, `multipanel`) and `facets` are form fields here. Query images have "
    "their own limits: a body over `query_image_max_bytes` (20 MiB) is refused with 413 while it "
    "streams in; images over `query_image_max_pixels` (16 MP), corrupt images and non-images with "
    "422; when every decoding slot is busy the answer is 503 with `Retry-After`, and over the optional "
    "per-client rate 429.",
    responses=_IMAGE_ERRORS,
    route_class_override=QueryImageRoute,  # the rate limit and the body cap run before the body is parsed
)
