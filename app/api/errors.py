"""The one place where the search domain's errors (:mod:`app.errors`) become HTTP answers.

``NotReady`` -> 503, ``Busy`` -> 503 with ``Retry-After``, ``NotFound`` -> 404, ``NotEmbedded``
-> 409, ``BadQuery`` -> 422; the body is the usual JSON :class:`app.schemas.ErrorResponse`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.errors import BadQuery, Busy, NotEmbedded, NotFound, NotReady, SearchError
from app.middleware import error_body

STATUS: tuple[tuple[type[SearchError], int], ...] = (
    (NotReady, 503),
    (NotFound, 404),
    (NotEmbedded, 409),
    (BadQuery, 422),
)
"""Domain error class -> HTTP status (first match wins; :class:`Busy` is a :class:`NotReady`)."""


def status_of(exc: SearchError) -> int:
    """The HTTP status for a domain error (500 for one this table does not know)."""
    return next((status for cls, status in STATUS if isinstance(exc, cls)), 500)


def install_domain_error_handler(app: FastAPI) -> None:
    """Answer every :class:`app.errors.SearchError` a route lets escape with its status and JSON body."""

    async def domain_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SearchError)
        status = status_of(exc)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy) else None
        return JSONResponse(error_body(status, exc.message, exc.code), status, headers=headers)

    app.add_exception_handler(SearchError, domain_error)
