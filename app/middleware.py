"""HTTP plumbing shared by every route: error bodies, the upload size limit, security headers,
per-route latency metrics.

- :class:`ApiError` is the one exception routes raise for a client-visible problem; it and every
  framework error (404 unknown route, 405, 422 validation) become a JSON :class:`ErrorResponse`
  body. Unexpected exceptions become a 500 with a generic message: no stack trace leaves the
  process.
- :class:`BodySizeLimit` refuses a body larger than ``max_upload_bytes`` with 413: at once from
  ``Content-Length``, or while the body streams in (chunked uploads, lying headers) before the
  multipart parser spools more of it to disk.
- :class:`SecurityHeaders` adds ``nosniff``, frame denial, a referrer policy and, unless the
  answer carries its own (the UI pages do), a locked-down content security policy.
- :class:`RouteMetrics` observes each request's latency under its route template (``/api/figures/{id}``),
  never the raw path, so label cardinality stays bounded, and adds a ``Server-Timing`` header with
  the request's phases (see :data:`app.metrics.REQUEST_PHASES`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.metrics import REQUEST_PHASES, Metrics
from app.redaction import redact, redact_paths

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """A problem the client should see: HTTP ``status``, a stable ``code`` and a ``message``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "error")
        self.headers = headers
        self.details = details


def error_body(
    status: int, message: str, code: str | None = None, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The JSON error document (see :class:`app.schemas.ErrorResponse`); server paths in the message
    and details are redacted (:mod:`app.redaction`)."""
    error: dict[str, Any] = {
        "status": status, "code": code or _CODES.get(status, "error"), "message": redact_paths(message)
    }
    if details is not None:
        error["details"] = redact(details)
    return {"error": error}


def clean_validation_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without the raw input or exception objects (JSON-safe, bounded)."""
    out: list[dict[str, Any]] = []
    for err in list(errors)[:50]:
        out.append(
            {
                "loc": [str(part) for part in err.get("loc", ())],
                "msg": str(err.get("msg", ""))[:500],
                "type": str(err.get("type", "")),
            }
        )
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Make every error answer a JSON :class:`ErrorResponse` (and never leak a traceback)."""

    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(error_body(exc.status, exc.message, exc.code, exc.details), exc.status, headers=exc.headers)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)[:500]
        return JSONResponse(error_body(exc.status_code, message), exc.status_code, headers=exc.headers)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = clean_validation_errors(exc.errors())
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"][1:] or first["loc"]) or "request"
        return JSONResponse(error_body(422, f"{where}: {first['msg']}", details=details), 422)

    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s", exc, exc_info=exc)
        # Starlette answers unhandled errors outside every middleware, SecurityHeaders included
        headers = {name.decode(): value.decode() for name, value in (*_COMMON_HEADERS, _API_CSP)}
        return JSONResponse(error_body(500, "internal error; see the service log"), 500, headers=headers)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse request bodies larger than ``max_bytes`` with 413, before they are spooled.

    A declared ``Content-Length`` above the limit is refused without reading the body. Otherwise
    the bytes are counted as they stream in; past the limit the app's receive channel fails, the
    app's own answer (if any) is discarded and a 413 is sent instead.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app answered the failed receive (e.g. a 400): replace it with 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            exceeded = True
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(error_body(413, f"request body exceeds the limit of {self.max_bytes} bytes")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


_COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_DOCS_CSP = (b"content-security-policy", b"frame-ancestors 'none'")
_DOCS_PAGES = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})


class SecurityHeaders:
    """Add security headers to every HTTP answer (a strict CSP where the answer sets none)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The strict CSP goes on every answer that sets none itself (the UI pages send their own):
        # API JSON, error answers on page routes, static files. FastAPI's interactive docs load
        # their script from a CDN with an inline bootstrap: they only get the framing ban.
        docs = str(scope.get("path", "")) in _DOCS_PAGES
        extra = [*_COMMON_HEADERS, _DOCS_CSP if docs else _API_CSP]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in extra if name not in present
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


class RouteMetrics:
    """Observe every HTTP request's latency under its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        phases: dict[str, float] = {}
        token = REQUEST_PHASES.set(phases)

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), server_timing(phases, time.perf_counter() - start)]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            REQUEST_PHASES.reset(token)
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.http.labels(scope.get("method", ""), template, str(status)).observe(
                time.perf_counter() - start
            )


def server_timing(phases: dict[str, float], total_s: float) -> tuple[bytes, bytes]:
    """The ``Server-Timing`` header: each phase and ``app`` (the whole handling) in milliseconds."""
    parts = [f"{name};dur={secs * 1e3:.3f}" for name, secs in sorted(phases.items())]
    parts.append(f"app;dur={total_s * 1e3:.3f}")
    return (b"server-timing", ", ".join(parts).encode("ascii"))
