"""The FastAPI application factory: ``create_app(settings)``.

Nothing is built at import time. The app's lifespan (startup) migrates the catalogue, opens the
engine, loads the encoder and the published indexes (a failure is reported by ``/readyz``, not
fatal), starts an index poller (``index_poll_s``: the live indexes follow a newly published version
without a restart; in-flight queries finish on the version they started with) and, when
``run_worker`` is set, the in-process re-index worker. Shutdown stops both and disposes the engine.

Middleware, outermost first: security headers, per-route latency metrics, CORS (closed unless
``cors_origins`` is set), the upload size limit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse

from app.api.deps import Services, require_read_key
from app.api.errors import install_domain_error_handler
from app.api.routes import articles, figures, health, jobs, search
from app.config import Settings
from app.encoder_host import EncoderHost, EncoderLoader
from app.jobs import Worker, job_counts
from app.metrics import Metrics
from app.middleware import BodySizeLimit, RouteMetrics, SecurityHeaders, install_error_handlers
from app.query_image import QueryImageLimits, QueryImageSlots
from app.rate_limit import RateLimiter
from app.search import SearchService
from app.web import pages
from indexer.catalogue import open_database
from training.fsio import private_dir

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    encoder_loader: EncoderLoader | None = None,
) -> FastAPI:
    """Build the service for ``settings`` (default: read from the environment).

    ``encoder_loader(spec, device)`` replaces ``training.encoders.load_encoder`` (tests use it to
    count or stub loads); by default the real loader is used.
    """
    settings = settings or Settings()
    settings.apply_torch_threads()
    metrics = Metrics()
    gated = settings.read_api_key is not None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await run_in_threadpool(_start, settings, metrics, encoder_loader)
        app.state.services = services
        try:
            yield
        finally:
            await run_in_threadpool(_stop, services)
            app.state.services = None

    app = FastAPI(
        title="BiomedSearch",
        version="0.1.0",
        summary="Semantic search over the figures of biomedical research articles.",
        description="Text -> figure and image -> caption / figure search with CLIP-style encoders "
        "(BiomedCLIP layout), a figure catalogue and FAISS indexes; new articles are added by "
        "durable re-index jobs. Every error answer is a JSON `ErrorResponse`.",
        lifespan=lifespan,
        # With a read key the docs and the OpenAPI document are read routes too (_gate_docs).
        docs_url=None if gated else "/docs",
        redoc_url=None if gated else "/redoc",
        openapi_url=None if gated else "/openapi.json",
    )
    app.state.services = None
    install_error_handlers(app)
    install_domain_error_handler(app)

    read_deps = [Depends(require_read_key)] if gated else []
    for module in (search, figures, articles, jobs):
        app.include_router(module.router, dependencies=read_deps)
    if read_deps:
        _gate_docs(app)
    app.include_router(health.router)

    app.include_router(pages.router)  # the web UI

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
        )
    app.add_middleware(RouteMetrics, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    _document_settings_bounds(app, settings)
    return app


def _start(settings: Settings, metrics: Metrics, encoder_loader: EncoderLoader | None) -> Services:
    """Open the catalogue, load the model and indexes, start the poller and worker (blocking).

    The app owns its :class:`EncoderHost` (the encoders and their one thread): the search service
    and the in-process worker share it, and ``_stop`` closes it."""
    url = settings.resolved_database_url
    private_dir(settings.data_home)
    db = open_database(url)
    engine, session_factory = db.engine, db.session_factory
    encoders = EncoderHost(settings, metrics, loader=encoder_loader)
    search = SearchService(settings, session_factory, metrics, encoders)
    search.load(force=True)
    search.refresh()
    metrics.register_gauges(search.index_sizes, lambda: job_counts(session_factory))
    rate = settings.query_image_rate_per_minute
    services = Services(
        settings, engine, session_factory, metrics, encoders, search,
        QueryImageSlots(QueryImageLimits.from_settings(settings)), RateLimiter(rate) if rate else None,
    )

    stop = threading.Event()

    def poll_indexes() -> None:
        while not stop.wait(settings.index_poll_s):
            if search.refresh():
                log.info("switched to index versions %s", {k: search.version(k) for k in ("image", "caption")})

    poller = threading.Thread(target=poll_indexes, name="biomedsearch-index-poller", daemon=True)
    poller.start()
    services.background += [stop, poller]

    if settings.run_worker:

        def switch_indexes() -> None:
            search.refresh()

        def encoder_ready() -> str | None:  # no job is claimed while the encoder is missing
            search.load()
            return None if search.encoder_loaded else search.encoder_error or "the encoder is not loaded yet"

        worker = Worker(
            settings,
            session_factory,
            lambda: search.encoder,
            encoder_ready=encoder_ready,
            text_encoder_provider=encoders.text_encoder if settings.text_model else None,
            on_published=switch_indexes,
        )
        worker.start()
        services.worker = worker
    return services


def _stop(services: Services) -> None:
    """Stop the worker (after its current job) and the poller; close the engine."""
    if services.worker is not None:
        services.worker.stop(timeout=60)
    for item in services.background:
        if isinstance(item, threading.Event):
            item.set()
    for item in services.background:
        if isinstance(item, threading.Thread):
            item.join(timeout=10)
    services.search.close()
    services.encoders.close()
    services.engine.dispose()


def _gate_docs(app: FastAPI) -> None:
    """Serve ``/openapi.json``, ``/docs`` and ``/redoc`` behind the read key (FastAPI's own routes
    for them are switched off when ``read_api_key`` is set): they describe every route and bound."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    gated = [Depends(require_read_key)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=gated)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=gated)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False, dependencies=gated)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")


def _document_settings_bounds(app: FastAPI, settings: Settings) -> None:
    """Generate the OpenAPI document with bounds that come from the settings (``q``'s maxLength)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            params = schema["paths"].get("/api/search", {}).get("get", {}).get("parameters", [])
            for param in params:
                if param.get("name") == "q":
                    param["schema"]["maxLength"] = settings.max_query_chars
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
