"""A route class for ``POST /api/search/image``: the per-client rate limit and the query-image body
cap, both applied before the multipart body is parsed.

FastAPI parses a form body before it calls the route or any dependency, so these checks wrap the
request itself (:class:`QueryImageRoute`):

1. the client's rate limit (``Settings.query_image_rate_per_minute``; off when 0): over it, 429
   with ``Retry-After``, and the body is never read;
2. the body cap (``Settings.query_image_max_bytes``): a declared ``Content-Length`` above it is
   refused at once, otherwise the bytes are counted as they stream in and the parse stops with 413
   as soon as they pass the cap, so no more than the cap is ever spooled (the app-wide
   ``max_upload_bytes`` limit still applies outside).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message

from app.middleware import ApiError


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _declared_length(request: Request) -> int | None:
    try:
        value = request.headers.get("content-length")
        return int(value) if value is not None else None
    except ValueError:
        return None


class QueryImageRoute(APIRoute):
    """An :class:`APIRoute` whose requests pass the rate limit and the query-image body cap first."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, wrapped by the checks (see the module docstring)."""
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            services = getattr(request.app.state, "services", None)
            if services is None:
                raise ApiError(503, "the service is starting")
            limiter = services.image_rate
            if limiter is not None:
                wait = limiter.acquire(_client(request))
                if wait > 0:
                    raise ApiError(
                        429, "too many image queries from this client; retry later",
                        headers={"Retry-After": str(max(1, math.ceil(wait)))},
                    )
            cap = services.settings.query_image_max_bytes
            too_large = f"the query image's request body exceeds the limit of {cap} bytes"
            declared = _declared_length(request)
            if declared is not None and declared > cap:
                raise ApiError(413, too_large, headers={"Connection": "close"})
            receive = request.receive
            seen = 0

            async def capped_receive() -> Message:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > cap:
                        raise HTTPException(413, too_large, headers={"Connection": "close"})
                return message

            return await handler(Request(request.scope, capped_receive))

        return checked
