"""The PMC OA client against a local HTTP server that answers like NCBI's oa.fcgi and serves the
shared packages: lookups, --since paging, resumable downloads, retries, rate limit, then ingest."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from typer.testing import CliRunner

from indexer.pmc_client import PmcClient, PmcError, fetch_packages, normalise_pmcid, resolve_href

PACKAGES = {"PMC100": "elife-19405", "PMC200": "elife-00353", "PMC300": "pone.0056489"}


class OaState:
    """What the fake service serves and what it saw."""

    def __init__(self, package_dir: Path) -> None:
        self.package_dir = package_dir
        self.seen: list[tuple[str, str | None]] = []  # (path+query, Range header)
        self.fail: dict[str, int] = {}  # path -> number of 503 answers still to give
        self.cut: set[str] = set()  # paths whose next answer stops half-way


def _record(pmcid: str, href: str) -> str:
    return (
        f'<record id="{pmcid}" citation="Test" license="CC BY" retracted="no">'
        f'<link format="tgz" updated="2024-01-02 03:04:05" href="{href}"/></record>'
    )


def _handler(state: OaState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str = "text/xml", extra: dict[str, str] | None = None,
                  cut: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if cut else body)
            if cut:
                self.wfile.flush()
                self.close_connection = True

        def do_GET(self) -> None:
            url = urlparse(self.path)
            state.seen.append((self.path, self.headers.get("Range")))
            if state.fail.get(url.path, 0) > 0:
                state.fail[url.path] -= 1
                self._send(503, b"busy")
                return
            if url.path == "/oa.fcgi":
                self._oa(parse_qs(url.query))
            elif url.path.startswith("/pub/"):
                self._file(url.path)
            else:
                self._send(404, b"not found")

        def _oa(self, q: dict[str, list[str]]) -> None:
            head = "<OA><responseDate>2024-01-01</responseDate>"
            if "id" in q:
                pmcid = q["id"][0]
                if pmcid not in PACKAGES:
                    error = f"identifier '{pmcid}' is not Open Access"
                    body = f'{head}<error code="idIsNotOpenAccess">{error}</error></OA>'
                else:
                    body = f"{head}<records>{_record(pmcid, f'/pub/pmc/{PACKAGES[pmcid]}.tar.gz')}</records></OA>"
            elif "resumptionToken" in q:
                body = f"{head}<records>{_record('PMC300', 'pub/pmc/pone.0056489.tar.gz')}</records></OA>"
            else:
                assert q.get("format") == ["tgz"]
                resumption = '<resumption><link token="page2" href="/oa.fcgi?resumptionToken=page2"/></resumption>'
                records = _record("PMC100", "/pub/pmc/elife-19405.tar.gz") + _record(
                    "PMC200", "/pub/pmc/elife-00353.tar.gz"
                )
                body = f"{head}<records>{resumption}{records}</records></OA>"
            self._send(200, body.encode())

        def _file(self, path: str) -> None:
            file = state.package_dir / Path(path).name
            if not file.is_file():
                self._send(404, b"")
                return
            data = file.read_bytes()
            cut = path in state.cut
            state.cut.discard(path)
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
                if start >= len(data):
                    self._send(416, b"")
                    return
                self._send(206, data[start:], "application/gzip",
                           {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}, cut)
            else:
                self._send(200, data, "application/gzip", cut=cut)

    return Handler


@pytest.fixture
def oa(shared_data: Path) -> Iterator[tuple[str, OaState]]:
    """(base URL of oa.fcgi, server state) of a fake OA service on 127.0.0.1."""
    state = OaState(shared_data / "jats" / "packages")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/oa.fcgi", state
    finally:
        server.shutdown()
        server.server_close()


def _client(url: str) -> PmcClient:
    return PmcClient(url, requests_per_second=50, retries=3, timeout_s=10, backoff_s=0.01)


def test_href_mapping_and_pmcid_normalisation() -> None:
    base = "https://www.ncbi.nlm.nih.gov/pmc/utils/oa/oa.fcgi"
    assert resolve_href("ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/b0/ac/PMC5.tar.gz", base) == (
        "https://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/b0/ac/PMC5.tar.gz"
    )
    assert resolve_href("/pub/x.tar.gz", "http://127.0.0.1:9/oa.fcgi") == "http://127.0.0.1:9/pub/x.tar.gz"
    with pytest.raises(PmcError):
        resolve_href("ftp://elsewhere.example/x.tar.gz", base)
    assert normalise_pmcid("pmc123") == normalise_pmcid("123") == "PMC123"
    with pytest.raises(PmcError, match="not a PMCID"):
        normalise_pmcid("PMC12x")


def test_lookup_download_and_errors(oa: tuple[str, OaState], shared_data: Path, tmp_path: Path) -> None:
    url, _ = oa
    with _client(url) as client:
        record = client.lookup("PMC100")
        assert record.links["tgz"].endswith("/pub/pmc/elife-19405.tar.gz") and record.license == "CC BY"
        path = client.download(record, tmp_path)
        assert path.read_bytes() == (shared_data / "jats" / "packages" / "elife-19405.tar.gz").read_bytes()
        with pytest.raises(PmcError, match="not Open Access"):
            client.lookup("PMC999")


def test_interrupted_download_resumes_with_range(oa: tuple[str, OaState], shared_data: Path,
                                                 tmp_path: Path) -> None:
    url, state = oa
    state.cut.add("/pub/pmc/pone.0056489.tar.gz")
    state.fail["/pub/pmc/pone.0056489.tar.gz"] = 0
    with _client(url) as client:
        path = client.download(client.lookup("PMC300"), tmp_path)
    assert path.read_bytes() == (shared_data / "jats" / "packages" / "pone.0056489.tar.gz").read_bytes()
    ranges = [r for p, r in state.seen if p.startswith("/pub/")]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1][6:-1]) > 0
    assert not list(tmp_path.glob("*.part"))


def test_retries_with_backoff_then_gives_up(oa: tuple[str, OaState], tmp_path: Path) -> None:
    url, state = oa
    state.fail["/oa.fcgi"] = 2
    with _client(url) as client:
        assert client.lookup("PMC200").pmcid == "PMC200"
        state.fail["/oa.fcgi"] = 10
        with pytest.raises(PmcError, match="gave up after 4 attempts"):
            client.lookup("PMC200")


def test_rate_limit_spaces_requests(oa: tuple[str, OaState]) -> None:
    url, _ = oa
    with PmcClient(url, requests_per_second=20, retries=0) as client:
        started = time.monotonic()
        for _ in range(5):
            client.lookup("PMC200")
        assert time.monotonic() - started >= 4 / 20 - 0.01


def test_since_follows_resumption_and_fetch_reports_failures(oa: tuple[str, OaState], tmp_path: Path) -> None:
    url, state = oa
    with _client(url) as client:
        assert [r.pmcid for r in client.updated_since(dt.date(2024, 1, 1))] == ["PMC100", "PMC200", "PMC300"]
    assert any("from=2024-01-01" in p for p, _ in state.seen)
    errors: list[tuple[str, str]] = []
    paths = fetch_packages(["PMC200", "PMC999"], dest_dir=tmp_path / "dl", base_url=url, backoff_s=0.01,
                           requests_per_second=50, on_error=lambda p, m: errors.append((p, m)), progress=False)
    assert [p.name for p in paths] == ["elife-00353.tar.gz"]
    assert errors and errors[0][0] == "PMC999"
    before = len(state.seen)
    again = fetch_packages(["PMC200"], dest_dir=tmp_path / "dl", base_url=url, progress=False)
    assert again == paths and not any(p.startswith("/pub/") for p, _ in state.seen[before:])


def test_cli_fetch_downloads_and_ingests(oa: tuple[str, OaState], tmp_path: Path) -> None:
    from app.cli import cli

    url, _ = oa
    env = {"BIOMEDSEARCH_DATA_HOME": str(tmp_path / "home"), "BIOMEDSEARCH_PMC_OA_URL": url,
           "BIOMEDSEARCH_PMC_REQUESTS_PER_SECOND": "10"}
    result = CliRunner().invoke(cli, ["fetch", "--no-progress", "PMC100", "PMC200"], env=env)
    assert result.exit_code == 0, result.output
    assert "fetch: 2 package(s) downloaded, 0 failed" in result.output
    assert "ingest: 2 articles (2 added" in result.output
    assert sorted(p.name for p in (tmp_path / "home" / "downloads").iterdir()) == [
        "elife-00353.tar.gz", "elife-19405.tar.gz"
    ]
    bad = CliRunner().invoke(cli, ["fetch", "--since", "yesterday"], env=env)
    assert bad.exit_code == 2 and "not a date" in bad.output
