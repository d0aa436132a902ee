"""Hostile input through the API (and the same archives through `biomedsearch ingest`): every API
case is a 4xx with a JSON error body, every CLI case a non-zero exit, and nothing is stored.

Archives (path traversal, absolute paths, symbolic and hard links, special files, absurd member
counts and sizes, zip bombs, DTD entity attacks in the XML, truncated and fake archives) are
refused at upload, before a job is queued; images (text posing as an image, truncated files,
decompression bombs) are refused by the image search; malformed multipart bodies, oversize
uploads and absurd parameters are refused by the request checks. For each, the data home's files
and the catalogue's rows are compared before and after.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hostile_xml import BILLION_LAUGHS
from reliability_fixtures import (
    API_KEY,
    FAKE_MODEL_ID,
    FakeEncoder,
    article_package,
    article_xml,
    jpeg,
    make_settings,
    package_members,
    tar_gz,
    zip_bytes,
)
from sqlalchemy import func, select

from app.config import Settings
from app.jobs import Worker
from app.main import create_app
from indexer.catalogue import Article, Embedding, Figure, Job, make_engine, make_session_factory

H = {"X-API-Key": API_KEY}
LIMITS = {
    "max_upload_bytes": 2_000_000,
    "max_archive_members": 50,
    "max_member_bytes": 1_000_000,
    "max_archive_bytes": 3_000_000,
    "max_image_pixels": 5_000_000,
}
EXTERNAL_ENTITY = article_xml(
    77, 0, doctype='<!DOCTYPE article [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', extra_body="<p>&xxe;</p>"
)
PARAMETER_ENTITY = article_xml(
    78, 0, doctype='<!DOCTYPE article [<!ENTITY % p SYSTEM "http://127.0.0.1:9/evil.dtd"> %p;]>'
)


# --- fixtures ----------------------------------------------------------------------------------------


def _populate(settings: Settings, tmp: Path) -> None:
    from indexer.catalogue import migrate
    from indexer.embeddings import embed_pending
    from indexer.index_update import update_indexes
    from indexer.ingest import ingest_paths

    url = settings.resolved_database_url
    migrate(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    tmp.mkdir(parents=True, exist_ok=True)
    pkgs = []
    for pmcid in (11, 12, 13):
        pkg = tmp / f"PMC{pmcid}.tar.gz"
        pkg.write_bytes(article_package(pmcid, 2))
        pkgs.append(pkg)
    ingest_paths(pkgs, factory, settings.data_home, limits=settings.ingest_limits(), progress=False)
    embed_pending(factory, FakeEncoder(), settings.data_home, batch_size=8, progress=False)
    update_indexes(factory, settings.index_dir, FAKE_MODEL_ID, options=settings.index_options(), progress=False)
    engine.dispose()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("hostile")
    settings = make_settings(root / "home", **LIMITS)
    _populate(settings, root / "pkgs")
    return settings


@pytest.fixture(scope="module")
def client(home: Settings) -> Iterator[TestClient]:
    app = create_app(home, encoder_loader=lambda s, d: FakeEncoder())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def snapshot(settings: Settings) -> dict[str, Any]:
    """Every file of the data home (but the live catalogue) and the row count of each table."""
    home = settings.data_home
    files = sorted(
        str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and not p.name.startswith("catalogue.db")
    )
    engine = make_engine(settings.resolved_database_url)
    with make_session_factory(engine)() as s:
        rows = {
            m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in (Article, Figure, Embedding, Job)
        }
    engine.dispose()
    return {"files": files, "rows": rows}


def assert_json_error(resp: Any, status: int | tuple[int, ...], code: str | None = None) -> dict[str, Any]:
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    error = resp.json()["error"]
    assert error["status"] == resp.status_code and error["message"]
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    if code is not None:
        assert error["code"] == code, error
    return error


# --- archives ------------------------------------------------------------------------------------


def _tar(add: Callable[[tarfile.TarFile], None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in package_members(21, 1):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add(tar)
    return buf.getvalue()


def _special(name: str, kind: bytes, linkname: str = "") -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tar.addfile(info)

    return add


def _zip_special(name: str, mode: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for member, data in package_members(22, 1):
            zf.writestr(member, data)
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


ZEROS = b"\0" * 1_500_000  # over max_member_bytes; compresses to ~1.5 kB
HOSTILE_PACKAGES: dict[str, tuple[str, bytes, str]] = {
    "tar: ../ traversal": ("t.tar.gz", tar_gz([*package_members(23, 1), ("../../evil.txt", b"x")]), "escapes"),
    "tar: nested traversal": ("t.tar.gz", tar_gz([("PMC24/../../evil.txt", b"x")]), "escapes"),
    "tar: absolute path": ("t.tar.gz", tar_gz([("/tmp/evil.txt", b"x")]), "escapes"),
    "tar: symlink": ("t.tar.gz", _tar(_special("PMC21/g2.jpg", tarfile.SYMTYPE, "/etc/passwd")), "link"),
    "tar: symlink dir": ("t.tar.gz", _tar(_special("PMC21/up", tarfile.SYMTYPE, "../..")), "link"),
    "tar: hard link": ("t.tar.gz", _tar(_special("PMC21/h", tarfile.LNKTYPE, "/etc/passwd")), "link"),
    "tar: fifo": ("t.tar.gz", _tar(_special("PMC21/fifo", tarfile.FIFOTYPE)), "special file"),
    "tar: device": ("t.tar.gz", _tar(_special("PMC21/dev", tarfile.CHRTYPE)), "special file"),
    "tar: member count": ("t.tar.gz", tar_gz([(f"PMC25/f{i}.txt", b"") for i in range(60)]), "more than 50"),
    "tar: member bomb": ("t.tar.gz", tar_gz([("PMC26/big.jpg", ZEROS)]), "over 1000000"),
    "tar: total bomb": ("t.tar.gz", tar_gz([(f"PMC27/{i}.bin", ZEROS[:900_000]) for i in range(4)]), "more than"),
    "tar: billion laughs": ("t.tar.gz", tar_gz([("PMC28/a.nxml", BILLION_LAUGHS)]), "ENTITY"),
    "tar: external entity": ("t.tar.gz", tar_gz([("PMC29/a.nxml", EXTERNAL_ENTITY)]), "ENTITY"),
    "tar: parameter entity": ("t.tar.gz", tar_gz([("PMC30/a.nxml", PARAMETER_ENTITY)]), "ENTITY"),
    "tar: truncated": ("t.tar.gz", article_package(31, 2)[:-300], "unreadable"),
    "tar: gzip of garbage": ("t.tar.gz", zlib.compress(b"x" * 5000)[:2] + b"\x1f\x8b" + b"junk" * 100, "unreadable"),
    "zip: ../ traversal": ("z.zip", zip_bytes([("../../evil.txt", b"x")]), "escapes"),
    "zip: absolute path": ("z.zip", zip_bytes([("/tmp/evil.txt", b"x")]), "escapes"),
    "zip: symlink": ("z.zip", _zip_special("PMC22/g2.jpg", 0o120777), "link"),
    "zip: member bomb": ("z.zip", zip_bytes([("PMC32/big.bin", ZEROS)]), "bytes"),
    "zip: billion laughs": ("z.zip", zip_bytes([("PMC33/a.nxml", BILLION_LAUGHS)]), "ENTITY"),
    "zip: truncated": ("z.zip", zip_bytes(package_members(34, 2))[:-200], "zip"),
}


@pytest.mark.parametrize("case", list(HOSTILE_PACKAGES))
def test_hostile_packages_are_refused_at_upload_and_nothing_is_stored(
    client: TestClient, home: Settings, case: str
) -> None:
    filename, data, fragment = HOSTILE_PACKAGES[case]
    before = snapshot(home)
    resp = client.post("/api/articles", files={"file": (filename, data)}, headers=H)
    if case == "tar: gzip of garbage":
        error = assert_json_error(resp, 415)  # not even a gzip stream: refused by its magic bytes
    else:
        error = assert_json_error(resp, 422, "unsafe_package")
        assert fragment in error["message"], error
    assert snapshot(home) == before
    assert not list(home.data_home.parent.rglob("evil.txt"))


def test_not_a_package_and_oversize_uploads(client: TestClient, home: Settings) -> None:
    before = snapshot(home)
    assert_json_error(client.post("/api/articles", files={"file": ("a.tar.gz", b"plain text")}, headers=H), 415)
    assert_json_error(client.post("/api/articles", files={"file": ("a.jpg", jpeg(1))}, headers=H), 415)
    big = b"\x1f\x8b" + b"\0" * 2_100_000
    assert_json_error(client.post("/api/articles", files={"file": ("a.tar.gz", big)}, headers=H), 413)

    def stream() -> Iterator[bytes]:  # chunked: no Content-Length to refuse early
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.tar.gz\"\r\n\r\n\x1f\x8b"
        for _ in range(40):
            yield b"\0" * 65536

    ct = {"content-type": "multipart/form-data; boundary=b"}
    assert_json_error(client.post("/api/articles", content=stream(), headers={**H, **ct}), 413)
    assert_json_error(client.post("/api/search/image", content=stream(), headers=ct), 413)
    lying = {**H, **ct, "content-length": "10"}
    resp = client.post("/api/articles", content=b"--b\r\n" + b"\0" * 100, headers=lying)
    assert 400 <= resp.status_code < 500
    assert snapshot(home) == before


def test_package_with_fake_truncated_and_bomb_images_stores_only_the_real_one(
    client: TestClient, home: Settings, tmp_path: Path
) -> None:
    """Bad images inside an accepted article are skipped (caption-only rows), never stored."""
    full = jpeg(4242, (200, 160))
    members = [
        ("PMC40/a.nxml", article_xml(40, 4)),
        ("PMC40/g1.jpg", jpeg(4001)),
        ("PMC40/g2.jpg", b"I am not a figure\n" * 10),
        ("PMC40/g3.jpg", full[: len(full) // 2]),
        ("PMC40/g4.png", _png_bomb(30_000, 30_000)),
    ]
    before = snapshot(home)
    resp = client.post("/api/articles", files={"file": ("PMC40.tar.gz", tar_gz(members))}, headers=H)
    assert resp.status_code == 202, resp.text
    engine = make_engine(home.resolved_database_url)
    factory = make_session_factory(engine)
    worker = Worker(home, factory, lambda: FakeEncoder())
    assert worker.run_once() == resp.json()["job_id"]
    job = client.get(resp.json()["status_url"]).json()
    assert job["state"] == "done", job
    with factory() as s:
        figs = s.scalars(select(Figure).join(Article).where(Article.pmcid == "PMC40").order_by(Figure.position)).all()
    engine.dispose()
    assert [f.image_path is not None for f in figs] == [True, False, False, False]
    reasons = " | ".join(f.skip_reason or "" for f in figs[1:])
    assert "not an image" in reasons and "truncated" in reasons and "decompression bomb" in reasons, reasons
    after = snapshot(home)
    new_media = {f for f in set(after["files"]) - set(before["files"]) if f.startswith("media/")}
    assert new_media == {p for p in (figs[0].image_path, figs[0].thumb_path) if p is not None}, new_media
    assert not any(f.startswith("uploads/") for f in after["files"]), "the finished job's upload is removed"


# --- images ----------------------------------------------------------------------------------------


def _png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def _jpeg_bomb() -> bytes:
    """A real JPEG whose SOF0 header is rewritten to claim 60000 x 60000 pixels."""
    data = bytearray(jpeg(5, (16, 16)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


def _truncated_png() -> bytes:
    buf = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (300, 200), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()[:-40]


BAD_IMAGES = {
    "text as jpg": ("x.jpg", b"I am not a figure\n" * 20),
    "html as png": ("x.png", b"<html><script>alert(1)</script></html>"),
    "svg": ("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
    "truncated jpeg": ("x.jpg", jpeg(6, (400, 300))[:300]),
    "truncated png": ("x.png", _truncated_png()),
    "png bomb": ("x.png", _png_bomb(50_000, 50_000)),
    "jpeg bomb": ("x.jpg", _jpeg_bomb()),
    "empty": ("x.jpg", b""),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
@pytest.mark.parametrize("mode", ["text", "image"])
def test_bad_query_images_are_refused(client: TestClient, home: Settings, case: str, mode: str) -> None:
    before = snapshot(home)
    name, data = BAD_IMAGES[case]
    resp = client.post("/api/search/image", files={"file": (name, data)}, data={"mode": mode})
    assert_json_error(resp, 422)
    assert snapshot(home) == before


# --- multipart -----------------------------------------------------------------------------------

_PART = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.tar.gz"\r\n\r\n'
MALFORMED_MULTIPART: dict[str, tuple[str, bytes]] = {
    "no boundary": ("multipart/form-data", _PART + b"x\r\n--b--\r\n"),
    "wrong boundary": ("multipart/form-data; boundary=zz", _PART + b"x\r\n--b--\r\n"),
    "garbage": ("multipart/form-data; boundary=b", b"\x00\xff" * 500),
    "no name": ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n"),
    "no headers": ("multipart/form-data; boundary=b", b"--b\r\n\r\nx\r\n--b--\r\n"),
    "truncated": ("multipart/form-data; boundary=b", _PART + b"\x1f\x8b\x08\x00"),
    "empty body": ("multipart/form-data; boundary=b", b""),
    "two files": (
        "multipart/form-data; boundary=b",
        _PART + b"\x1f\x8bx\r\n" + _PART + b"\x1f\x8by\r\n--b--\r\n",
    ),
    "many fields": (
        "multipart/form-data; boundary=b",
        b"".join(b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i for i in range(2000))
        + b"--b--\r\n",
    ),
    "huge header": (
        "multipart/form-data; boundary=b",
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + b"a" * 200_000 + b'"\r\n\r\nx\r\n--b--\r\n',
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_MULTIPART))
@pytest.mark.parametrize("url", ["/api/articles", "/api/search/image"])
def test_malformed_multipart_is_a_4xx(client: TestClient, home: Settings, case: str, url: str) -> None:
    before = snapshot(home)
    content_type, body = MALFORMED_MULTIPART[case]
    resp = client.post(url, content=body, headers={**H, "content-type": content_type})
    assert_json_error(resp, (400, 413, 415, 422))
    assert snapshot(home) == before


# --- parameters ---------------------------------------------------------------------------------------

ABSURD = [
    "/api/search?q=x&k=100000000000000000000000000000",
    "/api/search?q=x&k=-1",
    "/api/search?q=x&k=1e3",
    "/api/search?q=x&k=NaN",
    "/api/search?q=x&offset=99999999999",
    "/api/search?q=x&offset=990&k=20",
    "/api/search?q=x&year_from=-5",
    "/api/search?q=x&year_from=2020&year_to=1990",
    "/api/search?q=x&mode=../../etc/passwd",
    "/api/search?q=" + "a" * 5000,
    "/api/search?q=x&journal=" + "j" * 5000,
    "/api/search?q=x&journal=%00&mode=hybrid",  # PostgreSQL text cannot hold NUL: refused up front
    "/api/search?q=x&license=CC%00BY&mode=dense",
    "/api/search?q=",
    "/api/search?q=%20%20%20",
    "/api/search",
    "/api/figures/0",
    "/api/figures/-1",
    "/api/figures/99999999999999999999999",
    "/api/figures/1.5/image",
    "/api/figures/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/figures/1/similar?k=1000",
    "/api/articles/abc",
    "/api/jobs?limit=-1",
    "/api/jobs?limit=100000",
    "/api/jobs?state=bogus",
    "/api/jobs/99999999999999999999",
]
# Odd but valid: an answer (200, possibly empty), never a 5xx.
ODD_BUT_VALID = [
    "/api/search?q=a%00b",
    "/api/search?q=a%00b&mode=lexical",
    "/api/search?q=a%00b&mode=hybrid",
    "/api/search?q=%ED%A0%80%FF",
    "/api/search?q=%22%28%28%28%20OR%20AND%20NOT%20*%20NEAR%20%5E",
    "/api/search?q=x%27%3B%20DROP%20TABLE%20articles%3B--&mode=lexical",
    "/api/search?q=%F0%9F%A7%AC%20%E2%80%AE%20CT&mode=hybrid",
    "/api/search?q=x&license=%25%25_%5C&mode=hybrid",
    "/api/search?q=x&k=1&k=2",
    "/api/figures/1/similar?k=100",
]


@pytest.fixture
def db_client(db_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    """A populated service on SQLite and on PostgreSQL (the SQL paths differ)."""
    settings = make_settings(tmp_path / "home", db_url, search_mode="hybrid", **LIMITS)
    _populate(settings, tmp_path / "pkgs")
    app = create_app(settings, encoder_loader=lambda s, d: FakeEncoder())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, settings


def test_absurd_parameters_are_4xx_and_odd_ones_never_5xx(db_client: tuple[TestClient, Settings]) -> None:
    client, settings = db_client
    before = snapshot(settings)
    for url in ABSURD:
        resp = client.get(url)
        assert 400 <= resp.status_code < 500, f"{url[:80]}: {resp.status_code} {resp.text[:300]}"
        assert_json_error(resp, resp.status_code)
    for url in ODD_BUT_VALID:
        resp = client.get(url)
        assert resp.status_code == 200, f"{url[:80]}: {resp.status_code} {resp.text[:300]}"
    assert snapshot(settings) == before


# --- the same archives through the CLI ------------------------------------------------------------

CLI_CASES = [c for c in HOSTILE_PACKAGES if c.startswith("tar:") and c != "tar: gzip of garbage"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_hostile_packages_through_the_cli_are_refused_and_store_nothing(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in [k for k in os.environ if k.startswith("BIOMEDSEARCH_")]:
        monkeypatch.delenv(key)
    for name, value in LIMITS.items():
        monkeypatch.setenv(f"BIOMEDSEARCH_{name.upper()}", str(value))
    pkg = tmp_path / "in" / "package.tar.gz"
    pkg.parent.mkdir()
    pkg.write_bytes(HOSTILE_PACKAGES[case][1])
    home = tmp_path / "home"
    result = CliRunner().invoke(cli, ["ingest", str(pkg), "--data-home", str(home), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "refused" in result.output and "Traceback" not in result.output
    snap = snapshot(make_settings(home))
    assert snap == {"files": [], "rows": {"articles": 0, "figures": 0, "embeddings": 0, "jobs": 0}}, snap
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "in"]
