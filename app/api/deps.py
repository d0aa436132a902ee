"""FastAPI dependencies, as ``Annotated`` aliases routes declare in their signatures.

- :data:`ServicesDep`: the app's :class:`Services` (built by the lifespan of ``create_app``: the
  catalogue, the metrics, the encoder host shared by the search service and the worker, ...);
- :data:`SettingsDep`, :data:`SearchDep`, :data:`SessionDep` (a catalogue session per request);
- :func:`require_read_key` / :func:`require_write_key`: the ``X-API-Key`` header checks (constant
  time, ``hmac.compare_digest``). Writes need ``Settings.api_key`` and are refused (403) while no
  key is configured; reads (the API, metrics, the OpenAPI document and docs pages) are open unless
  ``Settings.read_api_key`` is set (then either key works); :func:`reads_allowed` says which.

The dependencies that only read app state are ``async def``: FastAPI runs a plain ``def``
dependency in the thread pool, and each such hop cost about 0.3 ms per request (four of them on a
search, measured with yappi); :func:`get_session` stays a plain generator (it opens a session).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.encoder_host import EncoderHost
from app.jobs import Worker
from app.metrics import Metrics
from app.middleware import ApiError
from app.query_image import QueryImageSlots
from app.rate_limit import RateLimiter
from app.search import SearchService

API_KEY_HEADER = "X-API-Key"
_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The service's API key.")


@dataclass
class Services:
    """What the routes share, built once per app by its lifespan."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    metrics: Metrics
    encoders: EncoderHost
    search: SearchService
    query_images: QueryImageSlots
    image_rate: RateLimiter | None = None  # the per-client image-query limit, when configured
    worker: Worker | None = None
    background: list[Any] = field(default_factory=list)  # threads / events to stop at shutdown


async def get_services(request: Request) -> Services:
    """The app's :class:`Services` (503 while the app is not started)."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise ApiError(503, "the service is starting")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(services: ServicesDep) -> Settings:
    """The app's Settings."""
    return services.settings


async def get_search(services: ServicesDep) -> SearchService:
    """The app's SearchService."""
    return services.search


def get_session(services: ServicesDep) -> Iterator[Session]:
    """A catalogue session for one request (closed afterwards; read-only use)."""
    with services.session_factory() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SearchDep = Annotated[SearchService, Depends(get_search)]
SessionDep = Annotated[Session, Depends(get_session)]


def _matches(given: str | None, *keys: SecretStr | None) -> bool:
    if not given:
        return False
    supplied = given.encode()
    ok = False
    for key in keys:
        if key is not None:
            ok |= hmac.compare_digest(supplied, key.get_secret_value().encode())
    return ok


async def require_write_key(
    services: ServicesDep, api_key: Annotated[str | None, Security(_api_key_header)] = None
) -> None:
    """Allow the request only with the configured write key (401 otherwise, 403 if none is set)."""
    key = services.settings.api_key
    if key is None or not key.get_secret_value():
        raise ApiError(403, "writes are disabled: no API key is configured (set BIOMEDSEARCH_API_KEY)")
    if not _matches(api_key, key):
        raise ApiError(401, f"missing or wrong {API_KEY_HEADER} header", headers={"WWW-Authenticate": "APIKey"})


async def reads_allowed(
    services: ServicesDep, api_key: Annotated[str | None, Security(_api_key_header)] = None
) -> bool:
    """True when this request may read: no ``read_api_key`` is set, or it carries that key (or the
    write key). Routes that answer everyone with less (``/readyz``) depend on this directly."""
    read_key = services.settings.read_api_key
    return read_key is None or _matches(api_key, read_key, services.settings.api_key)


ReadsAllowedDep = Annotated[bool, Depends(reads_allowed)]


async def require_read_key(allowed: ReadsAllowedDep) -> None:
    """When ``read_api_key`` is set, allow the request only with it (or the write key); else 401.
    Every read route depends on it: the API, ``/metrics``, ``/docs``, ``/redoc``, ``/openapi.json``."""
    if not allowed:
        raise ApiError(401, f"missing or wrong {API_KEY_HEADER} header", headers={"WWW-Authenticate": "APIKey"})
