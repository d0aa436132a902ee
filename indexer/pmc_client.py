"""Client for NCBI's PMC Open Access web service (``oa.fcgi``) and its package downloads.

- :meth:`PmcClient.lookup` asks ``oa.fcgi?id=PMCID`` for one article's record;
- :meth:`PmcClient.updated_since` pages through ``oa.fcgi?from=DATE&format=tgz`` following the
  ``<resumption><link href=... token=...>`` of each page;
- :meth:`PmcClient.download` fetches a record's ``tgz`` package into a folder, resumably: bytes go
  to ``<name>.part``, an interrupted download continues with an HTTP ``Range`` request, and the
  finished file is renamed into place (a present final file is not fetched again).

Every request is rate limited (``requests_per_second``) and retried with exponential backoff on
connection errors, timeouts, 429 and 5xx. ``ftp://ftp.ncbi.nlm.nih.gov/`` hrefs (what the real
service returns) are fetched over ``https://ftp.ncbi.nlm.nih.gov/``; relative hrefs resolve
against the service URL. The module never reads the environment: the CLI passes the settings.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlparse

import httpx
from lxml import etree

from training.fsio import fsync_dir, fsync_file

_FTP_PREFIX = "ftp://ftp.ncbi.nlm.nih.gov/"
_HTTPS_PREFIX = "https://ftp.ncbi.nlm.nih.gov/"
_PMCID = re.compile(r"^(?:PMC)?(\d{1,12})$", re.I)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class PmcError(RuntimeError):
    """The OA service refused or failed a request (the message says which and why)."""


@dataclass(frozen=True)
class OaRecord:
    """One ``<record>`` of the OA service: an article and its downloadable files by format."""

    pmcid: str
    citation: str | None = None
    license: str | None = None
    retracted: bool = False
    links: dict[str, str] = field(default_factory=dict)  # format ("tgz", "pdf") -> absolute URL
    updated: str | None = None  # the tgz link's "updated" timestamp


def normalise_pmcid(value: str) -> str:
    """``"PMC123"`` / ``"pmc123"`` / ``"123"`` -> ``"PMC123"``; raises PmcError otherwise."""
    m = _PMCID.match(value.strip())
    if not m:
        raise PmcError(f"{value!r} is not a PMCID (expected PMC followed by digits)")
    return f"PMC{m.group(1)}"


def resolve_href(href: str, base_url: str) -> str:
    """Map NCBI's ftp:// hrefs to https:// and resolve relative hrefs against ``base_url``."""
    if href.startswith(_FTP_PREFIX):
        return _HTTPS_PREFIX + href[len(_FTP_PREFIX) :]
    if href.startswith("ftp://"):
        raise PmcError(f"unsupported ftp host in {href!r}")
    return urljoin(base_url, href)


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


def _parse_records(root: etree._Element, base_url: str) -> list[OaRecord]:
    records = []
    for rec in root.iter("record"):
        links: dict[str, str] = {}
        updated = None
        for link in rec.iter("link"):
            fmt, href = link.get("format"), link.get("href")
            if fmt and href:
                links[fmt] = resolve_href(href, base_url)
                if fmt == "tgz":
                    updated = link.get("updated")
        records.append(
            OaRecord(
                pmcid=rec.get("id") or "",
                citation=rec.get("citation"),
                license=rec.get("license"),
                retracted=(rec.get("retracted") or "no").lower() == "yes",
                links=links,
                updated=updated,
            )
        )
    return records


class PmcClient:
    """A polite OA web service client (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        requests_per_second: float = 3.0,
        retries: int = 5,
        timeout_s: float = 60.0,
        backoff_s: float = 1.0,
        max_download_bytes: int = 2 * 1024**3,
    ) -> None:
        self.base_url = base_url
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_download_bytes = max_download_bytes
        self._limiter = _RateLimiter(requests_per_second)
        self._http = httpx.Client(
            timeout=timeout_s,
            follow_redirects=True,
            headers={"User-Agent": "biomedsearch/0.1 (PMC OA client)"},
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> PmcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _with_retries(self, what: str, call: Callable[[], httpx.Response]) -> httpx.Response:
        """Run ``call`` (one request) with rate limit and retries; return a non-retryable response."""
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self._limiter.wait()
            try:
                response = call()
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in _RETRY_STATUS:
                last = f"HTTP {response.status_code}"
                response.close()
                continue
            return response
        raise PmcError(f"{what}: gave up after {self.retries + 1} attempts ({last})")

    def _query(self, params: dict[str, str] | None = None, url: str | None = None) -> etree._Element:
        target = url or self.base_url
        response = self._with_retries(
            f"OA service {target}", lambda: self._http.get(target, params=params)
        )
        if response.status_code != 200:
            raise PmcError(f"OA service answered HTTP {response.status_code} for {response.url}")
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        try:
            root = etree.fromstring(response.content, parser=parser)
        except etree.XMLSyntaxError as exc:
            raise PmcError(f"OA service answered malformed XML: {exc}") from exc
        error = root.find("error")
        if error is not None:
            raise PmcError(f"OA service error {error.get('code') or ''}: {(error.text or '').strip()}")
        return root

    def lookup(self, pmcid: str) -> OaRecord:
        """The OA record of one article; raises PmcError when it is unknown or not open access."""
        pmcid = normalise_pmcid(pmcid)
        records = _parse_records(self._query({"id": pmcid}), self.base_url)
        if not records:
            raise PmcError(f"{pmcid}: no OA record")
        return records[0]

    def updated_since(self, since: dt.date) -> Iterator[OaRecord]:
        """Every record with a ``tgz`` package updated on or after ``since``, across all pages."""
        root = self._query({"from": since.isoformat(), "format": "tgz"})
        seen_tokens: set[str] = set()
        while True:
            yield from _parse_records(root, self.base_url)
            link = root.find("records/resumption/link")
            if link is None:
                link = root.find(".//resumption/link")
            if link is None:
                return
            token = link.get("token") or ""
            if token in seen_tokens:
                raise PmcError(f"OA service repeated resumption token {token!r}")
            seen_tokens.add(token)
            href = link.get("href")
            if href:
                root = self._query(url=resolve_href(href, self.base_url))
            else:
                root = self._query({"resumptionToken": token})

    def download(self, record: OaRecord, dest_dir: Path) -> Path:
        """Download the record's ``tgz`` package into ``dest_dir`` (resumable); return its path."""
        url = record.links.get("tgz")
        if not url:
            raise PmcError(f"{record.pmcid}: no tgz package in the OA record")
        name = Path(urlparse(url).path).name
        if not _SAFE_NAME.match(name) or not name.endswith((".tar.gz", ".tgz")):
            name = f"{normalise_pmcid(record.pmcid)}.tar.gz"
        dest_dir.mkdir(parents=True, exist_ok=True)
        final = dest_dir / name
        if final.exists():
            return final
        part = dest_dir / (name + ".part")
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                if self._download_once(url, part):
                    break
            except (httpx.TransportError, _Incomplete) as exc:
                last = str(exc)
                continue
        else:
            raise PmcError(f"{record.pmcid}: download of {url} incomplete after retries ({last})")
        fsync_file(part)
        part.replace(final)
        fsync_dir(dest_dir)
        return final

    def _download_once(self, url: str, part: Path) -> bool:
        """One (resumed) transfer into ``part``; True when complete. Raises _Incomplete to retry."""
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        self._limiter.wait()
        with self._http.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if status == 416 and have:  # nothing left to send: the part file is already whole
                return True
            if status in _RETRY_STATUS:
                raise _Incomplete(f"HTTP {status}")
            if status not in (200, 206):
                raise PmcError(f"download of {url} answered HTTP {status}")
            append = status == 206 and response.headers.get("content-range", "").startswith(
                f"bytes {have}-"
            )
            expected = response.headers.get("content-length")
            written = have if append else 0
            with part.open("ab" if append else "wb") as fh:
                for chunk in response.iter_bytes():  # as it arrives: a cut transfer keeps its bytes
                    written += len(chunk)
                    if written > self.max_download_bytes:
                        fh.close()
                        part.unlink(missing_ok=True)
                        raise PmcError(f"download of {url} is over {self.max_download_bytes} bytes")
                    fh.write(chunk)
        if expected is not None and written - (have if append else 0) < int(expected):
            raise _Incomplete(f"got {written} bytes, connection closed early")
        return True


class _Incomplete(Exception):
    """A transfer stopped early (retried, resuming from the part file)."""


def fetch_packages(
    pmcids: Sequence[str] = (),
    *,
    since: dt.date | None = None,
    dest_dir: Path,
    base_url: str,
    requests_per_second: float = 3.0,
    retries: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 1.0,
    max_download_bytes: int = 2 * 1024**3,
    on_error: Callable[[str, str], None] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Find and download the OA packages of ``pmcids`` (or of everything updated ``since``).

    Returns the package paths in ``dest_dir``. A failing article raises PmcError, unless
    ``on_error(pmcid, message)`` is given: then it is reported there and the others go on.
    """
    from tqdm import tqdm

    if not pmcids and since is None:
        raise PmcError("give PMCIDs or a --since date")
    paths: list[Path] = []
    with PmcClient(
        base_url,
        requests_per_second=requests_per_second,
        retries=retries,
        timeout_s=timeout_s,
        backoff_s=backoff_s,
        max_download_bytes=max_download_bytes,
    ) as client:

        def records() -> Iterator[tuple[str, OaRecord | PmcError]]:
            if since is not None:
                for rec in client.updated_since(since):
                    yield rec.pmcid, rec
            for raw in pmcids:
                try:
                    yield raw, client.lookup(raw)
                except PmcError as exc:
                    yield raw, exc

        bar = tqdm(records(), desc="fetch", unit="pkg", disable=not progress, total=len(pmcids) or None)
        for pmcid, rec in bar:
            try:
                if isinstance(rec, PmcError):
                    raise rec
                paths.append(client.download(rec, dest_dir))
            except PmcError as exc:
                if on_error is None:
                    raise
                on_error(pmcid, str(exc))
    return paths
