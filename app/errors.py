"""The search domain's errors. The domain raises these; the HTTP layer alone turns them into
statuses (:mod:`app.api.errors`), so the service, its channels and its decoders know nothing of HTTP.

- :class:`NotReady`: the service cannot answer yet (no encoder loaded, still loading);
- :class:`Busy`: a bounded resource is full for now (query-image decoding); retry after ``retry_after`` s;
- :class:`NotFound`: a named thing (a figure) does not exist;
- :class:`NotEmbedded`: the thing exists but has no vector for the loaded model;
- :class:`BadQuery`: the query itself is unusable (an unknown mode, an image that cannot be decoded
  or is over the query-image limits).

Each carries a human ``message`` and a stable machine ``code`` (or None: the HTTP layer's default
for the status).
"""

from __future__ import annotations


class SearchError(Exception):
    """Base of the domain's errors: a message for people and an optional stable ``code``."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class NotReady(SearchError):
    """The service cannot answer this query yet (e.g. the encoder is not loaded)."""


class Busy(NotReady):
    """A bounded resource is full; the query may be retried after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class NotFound(SearchError):
    """What the query names does not exist."""


class NotEmbedded(SearchError):
    """What the query names exists but has no embedding for the loaded model."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="not_embedded")


class BadQuery(SearchError):
    """The query cannot be answered as given (bad parameter, unusable image)."""
