"""The polite HTTP transport to the PMC Cloud Service bucket (the one module that speaks HTTP).

:class:`PmcHttp` reads objects of one S3 bucket anonymously over HTTP(S), from ``base_url`` (the
bucket's URL: virtual-hosted ``https://pmc-oa-opendata.s3.amazonaws.com`` or path-style
``http://host:port/pmc-oa-opendata``):

- every request is rate limited (``requests_per_second``) and retried with exponential backoff on
  connection errors, timeouts, 429 and 5xx;
- only the configured origin is ever contacted: a redirect is followed only when it stays on the
  same scheme, host and port, and a redirect anywhere else is refused (:class:`PmcError`);
- sizes are bounded: small objects (JSON, XML listings, inventory files) are read into memory up
  to ``max_small_bytes``; downloads stop at ``max_download_bytes``;
- :meth:`PmcHttp.download` is resumable and atomic: bytes go to ``<name>.part`` (an interrupted
  transfer continues with an HTTP ``Range`` request), the finished file is checked against the md5
  the caller names (a mismatch deletes it and raises :class:`ChecksumMismatch`), fsynced and only
  then renamed to its final name.

:func:`fetch_packages` is what the re-index job's ``fetch`` stage calls: it resolves PMCIDs
through :mod:`indexer.pmc_fetch` and returns verified article folders to ingest. NCBI's OA web
service (``oa.fcgi``) and its ``.tar.gz`` packages were retired in August 2026; this module no
longer talks to them (legacy packages users already hold are still ingested by ``ingest``).
The module never reads the environment: the CLI and the app pass the settings.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpx

from training.fsio import fsync_dir, fsync_file

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 5
_CHUNK = 1024 * 1024


class PmcError(RuntimeError):
    """The PMC Cloud Service refused or failed a request, or answered something unusable."""


class NotFound(PmcError):
    """The object (or article version) does not exist in the bucket (HTTP 404)."""


class ChecksumMismatch(PmcError):
    """A downloaded file's md5 differs from the md5 its metadata names (the file was refused)."""


@dataclass(frozen=True)
class HttpOptions:
    """Politeness and bounds of the client (the CLI fills them from Settings).

    requests_per_second: most requests started per second (all threads together).
    retries: extra attempts per request after a retryable failure (exponential backoff).
    timeout_s: connect / read timeout per request.
    backoff_s: first backoff pause; doubled at each further attempt.
    max_small_bytes: largest JSON / XML / inventory object read into memory.
    max_download_bytes: largest file downloaded to disk.
    """

    requests_per_second: float = 3.0
    retries: int = 5
    timeout_s: float = 60.0
    backoff_s: float = 1.0
    max_small_bytes: int = 64 * 1024**2
    max_download_bytes: int = 512 * 1024**2


class _RateLimiter:
    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self.next_at = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            delay = self.next_at - now
            self.next_at = max(now, self.next_at) + self.interval
        if delay > 0:
            time.sleep(delay)


class _Retry(Exception):
    """A transfer failed in a retryable way (retried, resuming from the part file)."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def file_md5(path: Path) -> str:
    """Hex md5 of a file's bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class PmcHttp:
    """Anonymous, polite, single-origin reader of one bucket (see the module docstring)."""

    def __init__(self, base_url: str, options: HttpOptions | None = None) -> None:
        if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).hostname:
            raise PmcError(f"the PMC Cloud base URL {base_url!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.options = options or HttpOptions()
        self._origin = _origin(self.base_url)
        self._limiter = _RateLimiter(self.options.requests_per_second)
        self._http = httpx.Client(
            timeout=self.options.timeout_s,
            follow_redirects=False,  # redirects are checked against the origin below
            headers={"User-Agent": "biomedsearch/0.1 (PMC Cloud Service client)"},
        )
        self.requests = 0  # requests sent (retries included)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> PmcHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, key: str) -> str:
        """The HTTP URL of object ``key`` in the bucket."""
        return f"{self.base_url}/{key.lstrip('/')}"

    def _bucket_root(self) -> str:
        """The URL S3 answers bucket requests (ListObjectsV2) on: ``https://bucket.host/`` for a
        virtual-hosted base, ``http://host/bucket`` for a path-style one."""
        return self.base_url + ("/" if urlsplit(self.base_url).path in ("", "/") else "")

    def _check_origin(self, url: str) -> None:
        if _origin(url) != self._origin:
            raise PmcError(f"refused: {url} is not on the configured PMC Cloud host {self.base_url}")

    def _send(self, url: str, params: dict[str, str] | None, headers: dict[str, str]) -> httpx.Response:
        """One streamed GET, following same-origin redirects only; the caller closes the response."""
        for _ in range(_MAX_REDIRECTS + 1):
            self._check_origin(url)
            self._limiter.wait()
            self.requests += 1
            request = self._http.build_request("GET", url, params=params, headers=headers)
            response = self._http.send(request, stream=True)
            if response.status_code not in _REDIRECTS:
                return response
            location = response.headers.get("location", "")
            response.close()
            if not location:
                raise PmcError(f"{url}: HTTP {response.status_code} redirect without a Location")
            target = urljoin(str(request.url), location)
            if _origin(target) != self._origin:
                raise PmcError(f"refused: {url} redirects to another host ({target})")
            url, params = target, None
        raise PmcError(f"{url}: more than {_MAX_REDIRECTS} redirects")

    def _attempts(self, what: str, once: Callable[[], Any]) -> Any:
        """Run ``once`` with retries and backoff on transport errors and :class:`_Retry`."""
        last = ""
        for attempt in range(self.options.retries + 1):
            if attempt:
                time.sleep(self.options.backoff_s * 2 ** (attempt - 1))
            try:
                return once()
            except (httpx.TransportError, _Retry) as exc:
                last = f"{type(exc).__name__}: {exc}"
        raise PmcError(f"{what}: gave up after {self.options.retries + 1} attempts ({last})")

    def get(self, key: str, params: dict[str, str] | None = None) -> tuple[bytes, httpx.Headers]:
        """The bytes and headers of a small object (at most ``max_small_bytes``).

        Raises NotFound on 404 and PmcError on any other refusal.
        """
        url = self.url(key) if key else self._bucket_root()
        limit = self.options.max_small_bytes

        def once() -> tuple[bytes, httpx.Headers]:
            response = self._send(url, params, {})
            try:
                status = response.status_code
                if status in _RETRY_STATUS:
                    raise _Retry(f"HTTP {status}")
                if status == 404:
                    raise NotFound(f"{key or url}: not in the bucket (HTTP 404)")
                if status != 200:
                    raise PmcError(f"{url} answered HTTP {status}")
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise PmcError(f"{key}: {declared} bytes, over the {limit}-byte limit")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body.extend(chunk)
                    if len(body) > limit:
                        raise PmcError(f"{key}: over the {limit}-byte limit")
                return bytes(body), response.headers
            finally:
                response.close()

        result: tuple[bytes, httpx.Headers] = self._attempts(f"GET {url}", once)
        return result

    def download(self, key: str, dest: Path, *, md5: str | None) -> bool:
        """Download object ``key`` to ``dest`` (resumable via ``dest.part``), verify ``md5``, and
        rename it into place; a present ``dest`` whose md5 matches is kept without a request.

        Returns True when bytes were transferred, False when the present file was kept. Raises
        ChecksumMismatch (the part file is deleted), NotFound or PmcError.
        """
        if dest.is_file() and md5 is not None and file_md5(dest) == md5.lower():
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        self._attempts(f"download {key}", lambda: self._download_once(key, part))
        if md5 is not None:
            got = file_md5(part)
            if got != md5.lower():
                part.unlink(missing_ok=True)
                raise ChecksumMismatch(f"{key}: md5 {got} differs from the metadata's {md5.lower()}; refused")
        fsync_file(part)
        part.replace(dest)
        fsync_dir(dest.parent)
        return True

    def _download_once(self, key: str, part: Path) -> None:
        """One (resumed) transfer into ``part``; raises _Retry to try again from where it stopped."""
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        limit = self.options.max_download_bytes
        response = self._send(self.url(key), None, headers)
        try:
            status = response.status_code
            if status == 416 and have:  # nothing left to send: the part file is already whole
                return
            if status in _RETRY_STATUS:
                raise _Retry(f"HTTP {status}")
            if status == 404:
                raise NotFound(f"{key}: not in the bucket (HTTP 404)")
            if status not in (200, 206):
                raise PmcError(f"download of {key} answered HTTP {status}")
            append = status == 206 and response.headers.get("content-range", "").startswith(f"bytes {have}-")
            if status == 206 and not append:
                raise PmcError(f"download of {key}: unexpected Content-Range {response.headers.get('content-range')}")
            expected = response.headers.get("content-length")
            written = have if append else 0
            with part.open("ab" if append else "wb") as fh:
                for chunk in response.iter_bytes():  # as it arrives: a cut transfer keeps its bytes
                    written += len(chunk)
                    if written > limit:
                        fh.close()
                        part.unlink(missing_ok=True)
                        raise PmcError(f"download of {key} is over the {limit}-byte limit")
                    fh.write(chunk)
        finally:
            response.close()
        if expected is not None and expected.isdigit() and written - (have if append else 0) < int(expected):
            raise _Retry(f"got {written} bytes, connection closed early")


def fetch_packages(
    pmcids: Sequence[str] = (),
    *,
    dest_dir: Path,
    base_url: str,
    requests_per_second: float = 3.0,
    retries: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 1.0,
    max_download_bytes: int = 512 * 1024**2,
    session_factory: sessionmaker[Session] | None = None,
    on_error: Callable[[str, str], None] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Fetch the latest (or the named) version of each of ``pmcids`` from the PMC Cloud Service
    into ``dest_dir``; return the verified article folders to ingest.

    ``PMC123`` or ``PMC123.2``. Retracted articles are not fetched and, when ``session_factory``
    is given, are withdrawn from the catalogue (the caller's next index publication drops their
    vectors). A failing article raises PmcError unless ``on_error(pmcid, message)`` is given: then
    it is reported there and the others go on.
    """
    from indexer.pmc_cloud import PmcCloud
    from indexer.pmc_fetch import fetch_ids

    options = HttpOptions(requests_per_second, retries, timeout_s, backoff_s, max_download_bytes=max_download_bytes)
    with PmcCloud(base_url, options) as cloud:
        report = fetch_ids(cloud, list(pmcids), dest_dir, session_factory=session_factory, progress=progress)
    problems = list(report.errors)
    retracted = "retracted: not added (withdrawn from the catalogue if it was there)"
    problems += [(label, retracted) for label in report.retracted]
    for ident, message in problems:
        if on_error is None:
            raise PmcError(f"{ident}: {message}")
        on_error(ident, message)
    return report.paths
