"""The web UI: server-rendered page shells over the JSON API, and their static files.

Pages (HTML, one Jinja2 template each; the data is fetched by the page's script from ``/api``):

- ``GET /``: search figures by text or by an image (drop, paste or pick); filters, paging, the
  image -> text switch, a facet sidebar (figure type by group, single-panel, year, journal,
  license, with counts; rendered from the vocabulary, counted by the API); the empty state when
  nothing is indexed yet.
- ``GET /figures/{id}``: one figure (zoomable image, caption, article, similar figures).
- ``GET /articles/{id}``: one article and its figures (where the add page links after a job).
- ``GET /add``: upload a package or paste PMCIDs (with the API key), live job progress.
- ``GET /static/{path}``: the vendored CSS / JS under ``app/web/static`` (nothing from a CDN).

Every page carries a content security policy without inline script or style (scripts are static
files), plus the headers :class:`app.middleware.SecurityHeaders` adds to every answer. When
``read_api_key`` is set the shells render no catalogue data (journals, counts): the page scripts
then ask for the key before they read the API.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select

from app.config import Settings
from app.middleware import ApiError
from indexer.catalogue import Article, Figure
from indexer.vocabulary import FigureGroup

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
MAX_ID = 2**31 - 1
MAX_JOURNALS = 500  # journals offered in the filter's suggestion list

EXAMPLE_QUERIES = (
    "confocal microscopy of neurons",
    "western blot",
    "survival curve",
    "chest CT",
    "phylogenetic tree",
)

# No inline script or style anywhere; images may be blob: URLs (the query image preview).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=str(WEB_DIR / "templates"))
router = APIRouter(include_in_schema=False)



def _services(request: Request) -> Any:
    """The app's Services, or None while the app is not started (the page then shows no counts)."""
    return getattr(request.app.state, "services", None)


def _reads_open(services: Any) -> bool:
    """True when reading the catalogue needs no key (so the shell may render catalogue data)."""
    settings: Settings | None = getattr(services, "settings", None)
    return settings is not None and settings.read_api_key is None


def _page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """Render template ``name`` with the common context and the page security headers."""
    services = _services(request)
    settings: Settings | None = getattr(services, "settings", None)
    base = {
        "reads_need_key": settings is not None and settings.read_api_key is not None,
        "writes_enabled": settings is not None and settings.api_key is not None,
        "max_upload_mb": (settings.max_upload_bytes // (1024 * 1024)) if settings else None,
    }
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code, headers=PAGE_HEADERS)


def _catalogue_facts(services: Any) -> dict[str, Any]:
    """Journals (for the filter's suggestions), the year range, figure and index counts."""
    facts: dict[str, Any] = {"journals": [], "year_min": None, "year_max": None, "figures": None, "indexed": None}
    if services is None:
        return facts
    try:
        facts["indexed"] = int(services.search.index_sizes().get("image", 0))
    except Exception:  # an index that cannot be read: the page says nothing rather than failing
        facts["indexed"] = None
    if not _reads_open(services):
        return facts
    with services.session_factory() as session:
        facts["journals"] = list(
            session.execute(
                select(Article.journal)
                .where(Article.journal.is_not(None))
                .group_by(Article.journal)
                .order_by(Article.journal)
                .limit(MAX_JOURNALS)
            ).scalars()
        )
        facts["year_min"], facts["year_max"] = session.execute(
            select(func.min(Article.year), func.max(Article.year))
        ).one()
        facts["figures"] = session.execute(select(func.count()).select_from(Figure)).scalar_one()
    return facts


@router.get("/", response_class=HTMLResponse)
def search_page(request: Request) -> HTMLResponse:
    """The search page (text or image queries; results are fetched by ``static/search.js``)."""
    facts = _catalogue_facts(_services(request))
    groups = [(group, group.types) for group in FigureGroup]
    return _page(request, "search.html", {"examples": EXAMPLE_QUERIES, "figure_groups": groups, **facts})


def _entity_page(request: Request, model: type[Figure] | type[Article], entity_id: int, template: str) -> HTMLResponse:
    """``template`` for one figure or article (the page's script fetches it), or the 404 page for an
    impossible id, or, when reads are open, for an id that does not exist."""
    services = _services(request)
    noun = model.__name__
    if not 1 <= entity_id <= MAX_ID:
        return _page(request, "not_found.html", {"what": f"That {noun.lower()}"}, status_code=404)
    if _reads_open(services):
        with services.session_factory() as session:
            if session.get(model, entity_id) is None:
                return _page(request, "not_found.html", {"what": f"{noun} {entity_id}"}, status_code=404)
    return _page(request, template, {f"{noun.lower()}_id": entity_id})


@router.get("/figures/{figure_id}", response_class=HTMLResponse)
def figure_page(request: Request, figure_id: int) -> HTMLResponse:
    """One figure's page: image (zoomable), caption, article, similar figures."""
    return _entity_page(request, Figure, figure_id, "figure.html")


@router.get("/articles/{article_id}", response_class=HTMLResponse)
def article_page(request: Request, article_id: int) -> HTMLResponse:
    """One article's page with its figures."""
    return _entity_page(request, Article, article_id, "article.html")


@router.get("/add", response_class=HTMLResponse)
def add_page(request: Request) -> HTMLResponse:
    """The add-articles page (upload or PMCIDs; the job's progress is polled by ``static/add.js``)."""
    return _page(request, "add.html", {})


@router.get("/static/{path:path}")
def static_file(path: str) -> FileResponse:
    """A file under ``app/web/static`` (404 for anything else, including paths that climb out)."""
    target = (STATIC_DIR / path).resolve()
    if not path or not target.is_relative_to(STATIC_DIR) or not target.is_file():
        raise ApiError(404, "no such static file")
    media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if target.suffix == ".js":
        media_type = "text/javascript"
    return FileResponse(target, media_type=media_type, headers={"Cache-Control": "public, max-age=300"})
