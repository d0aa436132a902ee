"""Hostile archives through the upload API (and the CLI): tar header bombs, chained extended
headers, names over 4 KiB, nested archives, zips whose end record declares too many members,
drive-letter names. Each is a 422 with a short JSON error at upload, before a job is queued, and
the data home and the catalogue are the same before and after (nothing stored, nothing lost).
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from reliability_fixtures import (
    API_KEY,
    FakeEncoder,
    article_package,
    article_zip,
    make_settings,
    package_members,
    tar_gz,
    zip_bytes,
)
from sqlalchemy import func, select

from app.config import Settings
from app.main import create_app
from indexer.catalogue import Article, Figure, Job, make_engine, make_session_factory

H = {"X-API-Key": API_KEY}
LIMITS = {"max_upload_bytes": 4_000_000, "max_archive_members": 50, "max_member_bytes": 1_000_000,
          "max_archive_bytes": 3_000_000}


def _long_name_tar(name: str, fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tar:
        tar.addfile(tarfile.TarInfo(name))
    return buf.getvalue()


def _raw_header(name: bytes, size: int, kind: bytes) -> bytes:
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = f"{size:011o}\0".encode()
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:265] = b"ustar  \0"
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def _chained_headers(count: int) -> bytes:
    parts = []
    for i in range(count):
        data = f"PMC1/n{i}".encode() + b"\0"
        parts.append(_raw_header(b"././@LongLink", len(data), b"L") + data.ljust(512, b"\0"))
    parts += [_raw_header(b"PMC1/a.txt", 0, b"0"), b"\0" * 1024]
    return gzip.compress(b"".join(parts), compresslevel=9)


def _many_entries_zip(count: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(count):
            zf.writestr(f"PMC1/f{i}.txt", b"")
    return buf.getvalue()


def _lying_zip() -> bytes:
    data = bytearray(zip_bytes(package_members(61, 1)))
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, eocd + 8, 60_000, 60_000)  # declares 60,000 entries
    return bytes(data)


HOSTILE = {
    "tar: GNU long-name bomb (16 MiB name)": (
        "t.tar.gz", _long_name_tar("PMC1/" + "a" * 16 * 1024**2, tarfile.GNU_FORMAT), "GNU long-name header"),
    "tar: pax header bomb (16 MiB path)": (
        "t.tar.gz", _long_name_tar("PMC1/" + "a" * 16 * 1024**2, tarfile.PAX_FORMAT), "pax header"),
    "tar: pax name over 4 KiB": ("t.tar.gz", _long_name_tar("PMC1/" + "b" * 5000, tarfile.PAX_FORMAT), "4096"),
    "tar: 5,000 chained long-name headers": ("t.tar.gz", _chained_headers(5000), "extended headers"),
    "tar: drive-letter name": ("t.tar.gz", tar_gz([("C:/evil.txt", b"x")]), "escapes"),
    "tar: a package inside the package": (
        "t.tar.gz", tar_gz([("inner.tar.gz", article_package(62, 1))]), "nested archives are refused"),
    "tar: packages in a folder of the package": (
        "t.tar.gz", tar_gz([("bulk/a.tgz", article_package(63, 1)), ("bulk/b.tgz", article_package(64, 1))]),
        "nested archives are refused"),
    "zip: a package inside the zip": ("z.zip", zip_bytes([("PMC65.tar.gz", article_package(65, 1))]), "nested"),
    "zip: end record declares 60,000 members": ("z.zip", _lying_zip(), "more than 50 members"),
    "zip: 200 real members": ("z.zip", _many_entries_zip(200), "declares 200 members"),
    "zip: drive-letter name": ("z.zip", zip_bytes([("C:\\evil.txt", b"x")]), "escapes"),
    "zip: name over 4 KiB": ("z.zip", zip_bytes([("PMC66/" + "c" * 5000, b"x")]), "4096"),
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from indexer.catalogue import migrate
    from indexer.ingest import ingest_paths

    root = tmp_path_factory.mktemp("hostile-archives")
    settings = make_settings(root / "home", **LIMITS)
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    pkg = root / "PMC70.tar.gz"
    pkg.write_bytes(article_package(70, 2))
    report = ingest_paths([pkg], make_session_factory(engine), settings.data_home, limits=settings.ingest_limits(),
                          progress=False)
    assert report.count("added") == 1
    engine.dispose()
    return settings


@pytest.fixture(scope="module")
def client(home: Settings) -> Iterator[TestClient]:
    app = create_app(home, encoder_loader=lambda s, d: FakeEncoder())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _snapshot(settings: Settings) -> dict[str, Any]:
    home = settings.data_home
    files = sorted(
        str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and not p.name.startswith("catalogue.db")
    )
    engine = make_engine(settings.resolved_database_url)
    with make_session_factory(engine)() as s:
        rows = {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in (Article, Figure, Job)}
    engine.dispose()
    return {"files": files, "rows": rows}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archives_are_a_422_at_upload_and_nothing_is_stored_or_lost(
    client: TestClient, home: Settings, case: str
) -> None:
    filename, data, fragment = HOSTILE[case]
    assert len(data) < LIMITS["max_upload_bytes"]
    before = _snapshot(home)
    assert before["rows"]["articles"] == 1
    resp = client.post("/api/articles", files={"file": (filename, data)}, headers=H)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["code"] == "unsafe_package" and fragment in error["message"], error
    assert len(resp.text) < 1200, "a hostile name is never echoed whole"
    assert "Traceback" not in resp.text
    assert _snapshot(home) == before
    assert not list(home.data_home.parent.rglob("evil.txt"))


def test_a_real_package_and_a_real_zip_still_upload(client: TestClient, home: Settings) -> None:
    for filename, data in (("PMC71.tar.gz", article_package(71, 1)), ("PMC72.zip", article_zip(72, 1))):
        resp = client.post("/api/articles", files={"file": (filename, data)}, headers=H)
        assert resp.status_code == 202, resp.text


CLI_CASES = [c for c in HOSTILE if c.startswith("tar:") and "package" not in c]


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_same_tar_archives_through_the_cli_are_refused(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("BIOMEDSEARCH_")]:
        monkeypatch.delenv(key)
    for name, value in LIMITS.items():
        monkeypatch.setenv(f"BIOMEDSEARCH_{name.upper()}", str(value))
    pkg = tmp_path / "in" / "package.tar.gz"
    pkg.parent.mkdir()
    pkg.write_bytes(HOSTILE[case][1])
    home = tmp_path / "home"
    result = CliRunner().invoke(cli, ["ingest", str(pkg), "--data-home", str(home), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "refused" in result.output and HOSTILE[case][2] in result.output
    assert "Traceback" not in result.output and len(result.output) < 3000
    snap = _snapshot(make_settings(home))
    assert snap == {"files": [], "rows": {"articles": 0, "figures": 0, "jobs": 0}}, snap


def test_a_package_of_packages_through_the_cli_stores_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("BIOMEDSEARCH_")]:
        monkeypatch.delenv(key)
    pkg = tmp_path / "bulk.tar.gz"
    pkg.write_bytes(tar_gz([(f"p{n}.tar.gz", article_package(80 + n, 1)) for n in range(3)]))
    home = tmp_path / "home"
    result = CliRunner().invoke(cli, ["ingest", str(pkg), "--data-home", str(home), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert result.output.count("nested archive") == 3
    assert _snapshot(make_settings(home))["rows"] == {"articles": 0, "figures": 0, "jobs": 0}
