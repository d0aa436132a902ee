"""The PMC Cloud HTTP transport (:class:`indexer.pmc_client.PmcHttp`) against a local HTTP server on
127.0.0.1 that serves plain bytes and misbehaves on request: redirects (same host followed,
another host refused), 503s (retried with backoff), cut transfers (resumed with ``Range``), md5
mismatches and size bounds (refused, nothing left behind), the rate limit, atomic writes."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from indexer.pmc_client import ChecksumMismatch, HttpOptions, NotFound, PmcError, PmcHttp

BODY = bytes(range(256)) * 400  # 102,400 bytes
MD5 = hashlib.md5(BODY).hexdigest()
FAST = HttpOptions(requests_per_second=1000, retries=3, backoff_s=0.01)


class State:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []  # (path, Range header)
        self.fail: dict[str, int] = {}  # path -> 503 answers still to give
        self.cut: set[str] = set()  # paths whose next answer stops half-way
        self.redirect: dict[str, str] = {}  # path -> Location


@pytest.fixture
def server() -> Iterator[tuple[str, State]]:
    state = State()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            state.seen.append((path, self.headers.get("Range")))
            if path in state.redirect:
                self.send_response(307)
                self.send_header("Location", state.redirect[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if state.fail.get(path, 0) > 0:
                state.fail[path] -= 1
                self.send_response(503)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"busy")
                return
            if not path.startswith("/bucket/obj"):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
            body = BODY[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if path in state.cut:
                state.cut.discard(path)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_get_and_download_verify_the_md5(server: tuple[str, State], tmp_path: Path) -> None:
    url, _ = server
    with PmcHttp(f"{url}/bucket", FAST) as http:
        body, headers = http.get("obj")
        assert body == BODY and headers["content-length"] == str(len(BODY))
        dest = tmp_path / "a" / "obj.bin"
        assert http.download("obj", dest, md5=MD5) is True
        assert dest.read_bytes() == BODY
        sent = http.requests
        assert http.download("obj", dest, md5=MD5) is False, "a present file with the right md5 is kept"
        assert http.requests == sent
        with pytest.raises(NotFound):
            http.get("missing")


def test_an_md5_mismatch_refuses_the_file_and_leaves_nothing(server: tuple[str, State], tmp_path: Path) -> None:
    url, _ = server
    dest = tmp_path / "obj.bin"
    with PmcHttp(f"{url}/bucket", FAST) as http, pytest.raises(ChecksumMismatch, match="md5"):
        http.download("obj", dest, md5=hashlib.md5(b"other").hexdigest())
    assert list(tmp_path.iterdir()) == []


def test_a_cut_transfer_resumes_with_a_range_request(server: tuple[str, State], tmp_path: Path) -> None:
    url, state = server
    state.cut.add("/bucket/obj")
    dest = tmp_path / "obj.bin"
    with PmcHttp(f"{url}/bucket", FAST) as http:
        assert http.download("obj", dest, md5=MD5)
    assert dest.read_bytes() == BODY
    assert state.seen == [("/bucket/obj", None), ("/bucket/obj", f"bytes={len(BODY) // 2}-")]
    assert not (tmp_path / "obj.bin.part").exists()


def test_a_part_file_left_by_a_killed_run_is_continued(server: tuple[str, State], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "obj.bin"
    (tmp_path / "obj.bin.part").write_bytes(BODY[:1000])
    with PmcHttp(f"{url}/bucket", FAST) as http:
        http.download("obj", dest, md5=MD5)
    assert dest.read_bytes() == BODY and state.seen == [("/bucket/obj", "bytes=1000-")]


def test_503s_are_retried_with_backoff_then_given_up(server: tuple[str, State], tmp_path: Path) -> None:
    url, state = server
    state.fail["/bucket/obj"] = 2
    with PmcHttp(f"{url}/bucket", FAST) as http:
        assert http.get("obj")[0] == BODY
        assert len(state.seen) == 3
        state.fail["/bucket/obj"] = 10
        with pytest.raises(PmcError, match="gave up after 4 attempts"):
            http.download("obj", tmp_path / "x", md5=MD5)
    assert not (tmp_path / "x").exists()


def test_redirects_stay_on_the_configured_host(server: tuple[str, State], tmp_path: Path) -> None:
    url, state = server
    port = url.rsplit(":", 1)[1]
    state.redirect["/bucket/same"] = f"{url}/bucket/obj"
    state.redirect["/bucket/away"] = f"http://localhost:{port}/bucket/obj"  # the same server, another host name
    with PmcHttp(f"{url}/bucket", FAST) as http:
        assert http.get("same")[0] == BODY
        with pytest.raises(PmcError, match="redirects to another host"):
            http.get("away")
        with pytest.raises(PmcError, match="redirects to another host"):
            http.download("away", tmp_path / "x", md5=MD5)
    assert ("/bucket/obj", None) in state.seen
    assert state.seen.count(("/bucket/obj", None)) == 1, "the other host was never asked"
    assert not list(tmp_path.iterdir())


def test_sizes_are_bounded(server: tuple[str, State], tmp_path: Path) -> None:
    url, _ = server
    small = HttpOptions(requests_per_second=1000, retries=0, max_small_bytes=1000, max_download_bytes=5000)
    with PmcHttp(f"{url}/bucket", small) as http:
        with pytest.raises(PmcError, match="limit"):
            http.get("obj")
        with pytest.raises(PmcError, match="limit"):
            http.download("obj", tmp_path / "x", md5=MD5)
    assert not list(tmp_path.iterdir())


def test_the_rate_limit_spaces_requests(server: tuple[str, State]) -> None:
    url, _ = server
    with PmcHttp(f"{url}/bucket", HttpOptions(requests_per_second=20)) as http:
        started = time.monotonic()
        for _ in range(6):
            http.get("obj")
        assert time.monotonic() - started >= 5 / 20 * 0.95


def test_the_base_url_must_be_http() -> None:
    with pytest.raises(PmcError, match="not an http"):
        PmcHttp("file:///etc")
