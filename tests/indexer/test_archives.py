"""Hostile archives built here, byte by byte: tar header bombs, chained extended headers, nested
and self-nesting archives, zips whose end record declares more members than allowed.

Each is refused by :mod:`indexer.archives` (the one place that unpacks tar and zip), with a short
message and bounded memory, and ingesting it stores nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from ingest_fixtures import LIMITS, article_xml, factory_for, fig, jpeg_bytes, make_tar

from indexer.archives import (
    MAX_HEADER_CHAIN,
    ArchiveBudget,
    ArchiveError,
    ArchiveLimits,
    NestedArchiveError,
    UnsafeArchiveError,
    extract,
    members,
    unpacked,
    zip_directory_size,
)
from indexer.catalogue import Article, Figure
from indexer.ingest import ingest_paths

BIG = ArchiveLimits(max_members=1000, max_bytes=10**8, max_member_bytes=10**8)


def long_name_tar(name_len: int, fmt: int) -> bytes:
    """A .tar.gz whose one member has a name of about ``name_len`` characters (GNU 'L' or pax
    header), in folders of 200-character names (so that it could be created on disk)."""
    buf = io.BytesIO()
    parts, left = ["PMC1"], name_len
    while left > 0:
        parts.append("a" * min(200, left))
        left -= 201
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tar:
        tar.addfile(tarfile.TarInfo("/".join(parts)))
    return buf.getvalue()


def _header(name: bytes, size: int, kind: bytes) -> bytes:
    """One raw 512-byte ustar header block with a valid checksum."""
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


def chained_headers_tar(count: int) -> bytes:
    """``count`` GNU long-name headers in a row, then one member: tarfile recurses once per header."""
    parts = []
    for i in range(count):
        data = f"PMC1/n{i}".encode() + b"\0"
        parts.append(_header(b"././@LongLink", len(data), b"L") + data.ljust(512, b"\0"))
    parts.append(_header(b"PMC1/a.txt", 0, b"0"))
    parts.append(b"\0" * 1024)
    return gzip.compress(b"".join(parts), compresslevel=9)


def nested_chain(depth: int) -> bytes:
    """A .tar.gz holding a .tar.gz holding ... ``depth`` levels, an article at the bottom: each level
    is the one below it under another name (a self-nesting archive, as a quine would be)."""
    data = _tar_bytes([("PMC9/PMC9.nxml", article_xml(title="Bottom"))])
    for level in range(depth):
        data = _tar_bytes([(f"level{level}.tar.gz", data)])
    return data


def _tar_bytes(items: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def many_entries_zip(count: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(count):
            zf.writestr(f"PMC1/f{i}.txt", b"")
    return buf.getvalue()


def _peak_while(call: object) -> int:
    tracemalloc.start()
    with contextlib.suppress(ArchiveError):
        call()  # type: ignore[operator]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def _pmc(n: int) -> str:
    return f'<article-id pub-id-type="pmc">{n}</article-id>'


def _dest(tmp_path: Path, name: str = "dest") -> Path:
    dest = tmp_path / name
    dest.mkdir()
    return dest


# --- tar header bombs -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu-long-name", "pax"])
def test_a_tar_header_bomb_is_refused_before_its_name_is_read(tmp_path: Path, fmt: int) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(long_name_tar(16 * 1024 * 1024, fmt))  # a 16 MiB name
    assert bomb.stat().st_size < 100_000
    with pytest.raises(UnsafeArchiveError, match="header of") as info:
        extract(bomb, _dest(tmp_path), ArchiveBudget(BIG))
    assert len(str(info.value)) < 300
    peak = _peak_while(lambda: extract(bomb, _dest(tmp_path, "again"), ArchiveBudget(BIG)))
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes: the header was read"


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu-long-name", "pax"])
def test_a_name_over_4_kib_is_refused_and_never_echoed_whole(tmp_path: Path, fmt: int) -> None:
    pkg = tmp_path / "long.tar.gz"
    pkg.write_bytes(long_name_tar(5000, fmt))
    with pytest.raises(UnsafeArchiveError, match="4096") as info:
        extract(pkg, _dest(tmp_path), ArchiveBudget(BIG))
    assert len(str(info.value)) < 400
    assert not any((tmp_path / "dest").iterdir())
    fine = tmp_path / "fine.tar.gz"
    fine.write_bytes(long_name_tar(2000, fmt))  # long names under the cap still unpack
    extract(fine, _dest(tmp_path, "fine"), ArchiveBudget(BIG))
    assert len([p for p in (tmp_path / "fine").rglob("*") if p.is_file()]) == 1


def test_chained_extended_headers_are_refused_without_recursion(tmp_path: Path) -> None:
    pkg = tmp_path / "chain.tar.gz"
    pkg.write_bytes(chained_headers_tar(5000))  # tarfile alone: RecursionError
    with pytest.raises(UnsafeArchiveError, match=f"more than {MAX_HEADER_CHAIN} extended headers"):
        extract(pkg, _dest(tmp_path), ArchiveBudget(BIG))
    few = tmp_path / "few.tar.gz"
    few.write_bytes(chained_headers_tar(2))  # two long names before one member: the last one names it
    extract(few, _dest(tmp_path, "few"), ArchiveBudget(BIG))
    assert len(list((tmp_path / "few" / "PMC1").iterdir())) == 1


def test_tar_and_zip_share_one_set_of_member_rules(tmp_path: Path) -> None:
    for name in ("C:/evil.txt", "c:evil.txt", "../evil.txt", "/abs/evil.txt", "a\\..\\..\\evil.txt"):
        tar = make_tar(tmp_path / "t.tar.gz", [(name, b"x")])
        zpath = tmp_path / "z.zip"
        with zipfile.ZipFile(zpath, "w") as zf:
            zf.writestr(zipfile.ZipInfo(name), b"x")
        for archive in (tar, zpath):
            with pytest.raises(UnsafeArchiveError, match="escapes"):
                extract(archive, _dest(tmp_path, f"d-{archive.suffix}-{abs(hash(name))}"), ArchiveBudget(BIG))
    assert not list(tmp_path.rglob("evil.txt"))


# --- zip central directories ---------------------------------------------------------------------------


def test_zip_member_count_comes_from_the_end_record_before_the_directory_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zpath = tmp_path / "many.zip"
    zpath.write_bytes(many_entries_zip(5000))
    with zpath.open("rb") as fh:
        assert zip_directory_size(fh)[0] == 5000

    def no_parse(*_a: object, **_k: object) -> None:
        raise AssertionError("the central directory was parsed before the member cap was checked")

    monkeypatch.setattr(zipfile, "ZipFile", no_parse)
    limits = ArchiveLimits(max_members=50, max_bytes=10**8, max_member_bytes=10**8)
    with pytest.raises(UnsafeArchiveError, match="declares 5000 members: more than 50 members"):
        extract(zpath, _dest(tmp_path), ArchiveBudget(limits))


def test_a_zip_whose_end_record_lies_about_its_directory_is_refused(tmp_path: Path) -> None:
    data = bytearray(many_entries_zip(3))
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<L", data, eocd + 12, 0x7FFFFFF0)  # a 2 GiB central directory for 3 entries
    zpath = tmp_path / "liar.zip"
    zpath.write_bytes(bytes(data))
    with pytest.raises(UnsafeArchiveError, match="central directory"):
        extract(zpath, _dest(tmp_path), ArchiveBudget(BIG))
    truncated = tmp_path / "nothing.zip"
    truncated.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ArchiveError, match="end-of-central-directory"):
        extract(truncated, _dest(tmp_path, "t"), ArchiveBudget(BIG))


# --- nested archives: one budget, depth 1 ----------------------------------------------------------------


def test_nested_archives_draw_from_one_budget(tmp_path: Path) -> None:
    blob = b"\0" * 600
    inner = _tar_bytes([("in/blob.bin", blob)])
    outer = tmp_path / "outer.tar.gz"
    outer.write_bytes(_tar_bytes([("a.tar.gz", inner), ("b.tar.gz", inner)]))
    limits = ArchiveLimits(max_members=100, max_bytes=2 * len(inner) + 1000, max_member_bytes=10**6, max_depth=3)
    budget = ArchiveBudget(limits)
    tmp = tmp_path / "tmp"
    with unpacked(outer, budget, tmp_root=tmp) as folder:
        for name in ("a.tar.gz", "b.tar.gz"):  # one after the other: each fits beside the outer package
            with unpacked(folder / name, budget, tmp_root=tmp) as inner_folder:
                assert (inner_folder / "in" / "blob.bin").stat().st_size == 600
        # inside one another they draw from one budget: the caps do not multiply
        with (
            unpacked(folder / "a.tar.gz", budget, tmp_root=tmp),
            pytest.raises(UnsafeArchiveError, match="unpacks to more than"),
            unpacked(folder / "b.tar.gz", budget, tmp_root=tmp),
        ):
            pass
        held = budget.bytes
    assert held == 2 * len(inner)  # what the outer package holds, once the inner ones are gone
    assert (budget.bytes, budget.members, budget.depth) == (0, 0, 0)
    assert not (tmp_path / "tmp").exists()


def test_an_archive_deeper_than_the_depth_cap_is_refused_before_it_is_unpacked(tmp_path: Path) -> None:
    outer = tmp_path / "outer.tar.gz"
    outer.write_bytes(nested_chain(3))
    budget = ArchiveBudget(ArchiveLimits(100, 10**7, 10**7, max_depth=1))
    with unpacked(outer, budget, tmp_root=tmp_path / "tmp") as folder:
        inner = folder / "level2.tar.gz"
        tmp = tmp_path / "tmp"
        with pytest.raises(NestedArchiveError, match="nested 2 deep"), unpacked(inner, budget, tmp_root=tmp):
            pass
        assert len(list((tmp_path / "tmp").iterdir())) == 1  # nothing was unpacked for the inner one


def test_a_self_nesting_archive_is_ingested_as_a_clean_refusal(db_url: str, tmp_path: Path) -> None:
    engine, factory = factory_for(db_url)
    pkg = tmp_path / "in" / "quine.tar.gz"
    pkg.parent.mkdir()
    pkg.write_bytes(nested_chain(400))  # 400 levels: unbounded recursion would hit RecursionError
    home = tmp_path / "home"
    report = ingest_paths([pkg], factory, home, limits=LIMITS, progress=False)
    assert [(f.reason, f.source) for f in report.failed] == [("nested archive", "quine.tar.gz!level399.tar.gz")]
    assert "at most 1 level" in report.failed[0].detail
    with factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Article)) == 0
    assert not (home / ".tmp").exists()
    engine.dispose()


def test_a_tarball_of_packages_is_one_level_too_many_and_stores_nothing(db_url: str, tmp_path: Path) -> None:
    engine, factory = factory_for(db_url)
    home = tmp_path / "home"
    kept_xml = article_xml(fig("f1", "PMC5-fig1"), ids=_pmc(5), title="Kept")
    kept = make_tar(tmp_path / "kept.tar.gz", [("PMC5/PMC5.nxml", kept_xml), ("PMC5/PMC5-fig1.jpg", jpeg_bytes())])
    assert not ingest_paths([kept], factory, home, limits=LIMITS, progress=False).failed
    inner = [_tar_bytes([(f"PMC{n}/PMC{n}.nxml", article_xml(ids=_pmc(n), title=f"A{n}"))]) for n in (6, 7, 8)]
    outer = tmp_path / "bulk.tar.gz"
    outer.write_bytes(_tar_bytes([(f"p{n}.tar.gz", data) for n, data in enumerate(inner)]))
    report = ingest_paths([outer], factory, home, limits=LIMITS, progress=False)
    assert [f.reason for f in report.failed] == ["nested archive"] * 3
    with factory() as s:
        titles = sorted(s.scalars(sa.select(Article.title)))
        assert titles == ["Kept"]  # nothing of the nested packages, nothing stored before lost
        assert s.scalar(sa.select(sa.func.count()).select_from(Figure)) == 1
    engine.dispose()


def test_member_iteration_reads_nothing_it_does_not_need(tmp_path: Path) -> None:
    pkg = make_tar(tmp_path / "p.tar.gz", [("PMC1/PMC1.nxml", article_xml()), ("PMC1/x.jpg", jpeg_bytes())])
    with members(pkg, ArchiveBudget(BIG)) as items:
        seen = [(m.parts, m.is_dir) for m in items]
    assert seen == [(("PMC1", "PMC1.nxml"), False), (("PMC1", "x.jpg"), False)]
