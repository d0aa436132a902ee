"""Hostile input is refused with a clear error and leaves nothing in the catalogue or on disk.

Every fixture is built here: tar members escaping the folder, links, absurd member counts and
sizes, billion laughs and external entities, text posing as a JPEG, a truncated JPEG and a
decompression-bomb PNG.
"""

from __future__ import annotations

import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from hostile_xml import BILLION_LAUGHS
from ingest_fixtures import LIMITS, article_xml, bomb_png, factory_for, fig, jpeg_bytes, make_tar

from indexer.archives import ArchiveBudget, ArchiveLimits, UnsafeArchiveError, extract
from indexer.catalogue import Article, Figure
from indexer.images import ImageRejected, store_image
from indexer.ingest import ingest_paths
from indexer.jats import HostileXMLError, parse_jats

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE article [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<article><front><article-meta><title-group><article-title>&xxe;</article-title></title-group>
</article-meta></front></article>"""


def _tar_with(path: Path, add: object) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        add(tar)  # type: ignore[operator]
    return path


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    """Unpack one archive under a fresh budget (what ingestion does for a top-level package)."""
    extract(archive, dest, ArchiveBudget(limits))


def _dest(tmp_path: Path) -> Path:
    dest = tmp_path / "dest"
    dest.mkdir()
    return dest


def test_member_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    pkg = make_tar(tmp_path / "evil.tar.gz", [("a/a.nxml", article_xml()), ("../escaped.txt", b"x")])
    with pytest.raises(UnsafeArchiveError, match="escapes"):
        extract_archive(pkg, _dest(tmp_path), LIMITS.archive)
    assert not (tmp_path / "escaped.txt").exists()
    absolute = make_tar(tmp_path / "abs.tar.gz", [("/tmp/abs-evil.txt", b"x")])
    (tmp_path / "d2").mkdir()
    with pytest.raises(UnsafeArchiveError, match="escapes"):
        extract_archive(absolute, tmp_path / "d2", LIMITS.archive)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_are_refused(tmp_path: Path, kind: bytes) -> None:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("a/fig1.jpg")
        info.type = kind
        info.linkname = "/etc/passwd"
        tar.addfile(info)

    pkg = _tar_with(tmp_path / "link.tar.gz", add)
    with pytest.raises(UnsafeArchiveError, match="link"):
        extract_archive(pkg, _dest(tmp_path), LIMITS.archive)


def test_absurd_member_count_is_refused(tmp_path: Path) -> None:
    limits = replace(LIMITS, max_archive_members=50)
    pkg = make_tar(tmp_path / "many.tar.gz", [(f"a/f{i}.txt", b"") for i in range(51)])
    with pytest.raises(UnsafeArchiveError, match="more than 50 members"):
        extract_archive(pkg, _dest(tmp_path), limits.archive)


def test_huge_member_and_huge_total_are_refused(tmp_path: Path) -> None:
    blob = b"\0" * 200_000  # compresses to almost nothing: a zip-bomb-like member
    pkg = make_tar(tmp_path / "huge.tar.gz", [("a/big.bin", blob)])
    assert pkg.stat().st_size < 5_000
    with pytest.raises(UnsafeArchiveError, match="over 100000"):
        extract_archive(pkg, _dest(tmp_path), replace(LIMITS, max_member_bytes=100_000).archive)
    many = make_tar(tmp_path / "total.tar.gz", [(f"a/{i}.bin", blob) for i in range(6)])
    (tmp_path / "d2").mkdir()
    with pytest.raises(UnsafeArchiveError, match="unpacks to more than 1000000 bytes"):
        extract_archive(many, tmp_path / "d2", replace(LIMITS, max_archive_bytes=1_000_000).archive)


def test_billion_laughs_and_external_entities_are_refused() -> None:
    for xml in (BILLION_LAUGHS, EXTERNAL_ENTITY):
        with pytest.raises(HostileXMLError, match="ENTITY"):
            parse_jats(xml)


def test_text_posing_as_jpeg_truncated_jpeg_and_bomb_png_are_refused(tmp_path: Path) -> None:
    kw = {"max_pixels": LIMITS.max_image_pixels, "thumbnail_size": 64, "max_bytes": 10**7}
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"I am not a figure\n")
    with pytest.raises(ImageRejected, match="not an image"):
        store_image(fake, tmp_path / "home", **kw)  # type: ignore[arg-type]
    truncated = tmp_path / "trunc.jpg"
    full = jpeg_bytes((400, 300), color=(10, 120, 200))
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageRejected, match="truncated"):
        store_image(truncated, tmp_path / "home", **kw)  # type: ignore[arg-type]
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    assert bomb.stat().st_size < 2_000
    with pytest.raises(ImageRejected, match="decompression bomb"):
        store_image(bomb, tmp_path / "home", **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*.*"))


def _counts(url: str) -> tuple[int, int]:
    engine, factory = factory_for(url)
    with factory() as s:
        counts = (
            s.scalar(sa.select(sa.func.count()).select_from(Article)) or 0,
            s.scalar(sa.select(sa.func.count()).select_from(Figure)) or 0,
        )
    engine.dispose()
    return counts


def test_ingest_refuses_hostile_sources_and_stores_nothing_of_them(sqlite_url: str, tmp_path: Path) -> None:
    good_jpeg = jpeg_bytes((120, 90))
    evil = make_tar(
        tmp_path / "evil.tar.gz",
        [("a/a.nxml", article_xml(fig("f1", "a-fig1"))), ("a/a-fig1.jpg", good_jpeg), ("a/../../x.jpg", b"x")],
    )
    laughs = tmp_path / "laughs.nxml"
    laughs.write_bytes(BILLION_LAUGHS)
    engine, factory = factory_for(sqlite_url)
    home = tmp_path / "home"
    report = ingest_paths([evil, laughs], factory, home, limits=LIMITS, progress=False)
    engine.dispose()
    assert {f.reason for f in report.failed} == {"refused package", "refused XML"}
    assert any("escapes" in f.detail for f in report.failed)
    assert any("ENTITY" in f.detail for f in report.failed)
    assert _counts(sqlite_url) == (0, 0)
    assert not (home / "media").exists()
    assert "2 source(s) refused" in report.summary()


def test_fake_and_broken_images_become_caption_only_figures(sqlite_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "art"
    folder.mkdir()
    body = fig("f1", "good") + fig("f2", "fake") + fig("f3", "trunc") + fig("f4", "bomb")
    (folder / "art.nxml").write_bytes(article_xml(body))
    (folder / "good.jpg").write_bytes(jpeg_bytes((100, 80)))
    (folder / "fake.jpg").write_bytes(b"I am not a figure\n")
    full = jpeg_bytes((400, 300))
    (folder / "trunc.jpg").write_bytes(full[: len(full) // 2])
    (folder / "bomb.png").write_bytes(bomb_png())
    engine, factory = factory_for(sqlite_url)
    report = ingest_paths([folder], factory, tmp_path / "home", limits=LIMITS, progress=False)
    with factory() as s:
        rows = {f.fig_id: f for f in s.scalars(sa.select(Figure))}
    engine.dispose()
    assert not report.failed
    assert rows["f1"].image_path and rows["f1"].skip_reason is None
    for fig_id, why in (("f2", "not an image"), ("f3", "truncated"), ("f4", "decompression bomb")):
        assert rows[fig_id].image_path is None and why in (rows[fig_id].skip_reason or ""), fig_id
    assert sorted(s.item for s in report.skipped) == ["f2/1", "f3/1", "f4/1"]
    assert report.images_stored == 1 and report.figures == 4


def test_manifest_image_paths_cannot_escape(sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes())
    inner = tmp_path / "set"
    inner.mkdir()
    (inner / "m.jsonl").write_text(
        '{"image": "../secret.jpg", "caption": "a"}\n{"image": "/etc/hostname", "caption": "b"}\n'
    )
    engine, factory = factory_for(sqlite_url)
    report = ingest_paths([inner / "m.jsonl"], factory, tmp_path / "home", limits=LIMITS, progress=False)
    engine.dispose()
    assert [s.reason for s in report.skipped] == ["unsafe path", "unsafe path"]
    assert report.images_stored == 0
