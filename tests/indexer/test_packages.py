"""Discovery of packages, folders, XML files and manifests; unpacking real PMC-style packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ingest_fixtures import LIMITS, article_xml, jpeg_bytes, make_tar

from indexer.archives import ArchiveBudget, ArchiveError, extract, unpacked
from indexer.packages import PackageError, discover, discoverable_archives


def test_discovery_of_each_kind(tmp_path: Path) -> None:
    art = tmp_path / "root" / "art"
    art.mkdir(parents=True)
    (art / "a.nxml").write_bytes(article_xml())
    (art / "a-fig1.jpg").write_bytes(jpeg_bytes())
    pairs = tmp_path / "root" / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "x.jpg", "caption": "c"}) + "\n")
    (tmp_path / "root" / "meta.jsonl").write_text(json.dumps({"id": "not a pair"}) + "\n")
    make_tar(tmp_path / "root" / "pkg.tar.gz", [("pkg/b.nxml", article_xml())])
    (tmp_path / "root" / "old.zip").write_bytes(b"PK")

    found = list(discover([tmp_path / "root"]))
    sources = [(f.source.kind, f.source.path.name, f.source.single) for f in found if f.source]
    assert sources == [("jats", "a.nxml", True), ("manifest", "pairs.jsonl", True)]
    assert [f.archive.name for f in found if f.archive] == ["pkg.tar.gz"]
    reasons = {Path(f.skipped[0]).name: f.skipped[1] for f in found if f.skipped}
    assert set(reasons) == {"meta.jsonl", "old.zip"}

    bare = tmp_path / "renamed.xml.orig"
    bare.write_bytes(article_xml())
    assert [f.source.kind for f in discover([bare]) if f.source] == ["jats"]


def test_unsupported_and_missing_paths_raise(tmp_path: Path) -> None:
    odd = tmp_path / "notes.txt"
    odd.write_text("hello")
    with pytest.raises(PackageError, match="not a package"):
        list(discover([odd]))
    with pytest.raises(PackageError, match="no such file"):
        list(discover([tmp_path / "nope"]))


def test_real_package_unpacks_to_its_folder(shared_data: Path, tmp_path: Path) -> None:
    pkg = shared_data / "jats" / "packages" / "elife-19405.tar.gz"
    dest = tmp_path / "out"
    dest.mkdir()
    extract(pkg, dest, ArchiveBudget(LIMITS.archive))
    names = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert names == ["elife-19405/elife-19405-fig1.jpg", "elife-19405/elife-19405-inf1.jpg",
                     "elife-19405/elife-19405.nxml"]
    assert (dest / "elife-19405" / "elife-19405.nxml").read_bytes() == (
        shared_data / "jats" / "elife-19405" / "elife-19405.nxml"
    ).read_bytes()


def test_unpacked_folder_is_removed_afterwards(tmp_path: Path) -> None:
    pkg = make_tar(tmp_path / "p.tar.gz", [("p/a.nxml", article_xml())])
    with unpacked(pkg, ArchiveBudget(LIMITS.archive), tmp_root=tmp_path) as folder:
        assert (folder / "p" / "a.nxml").is_file()
    assert not folder.exists()


def test_corrupt_archive_is_an_archive_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="unreadable archive"):
        extract(bad, dest, ArchiveBudget(LIMITS.archive))


def test_a_tar_of_the_current_folder_unpacks(tmp_path: Path) -> None:
    """``tar -C dir .`` writes a ``./`` root member: passed over, not refused."""
    pkg = make_tar(tmp_path / "dot.tar.gz", [("./a.nxml", article_xml())])
    with unpacked(pkg, ArchiveBudget(LIMITS.archive), tmp_root=tmp_path / "t") as folder:
        assert (folder / "a.nxml").is_file()


def test_discoverable_archives_mirror_discovery(tmp_path: Path) -> None:
    files = [("bulk", "a.tar.gz"), ("art", "art.nxml"), ("art", "supp.tar.gz"), ("art", "sub", "x.tgz"), ("top.tar",)]
    assert discoverable_archives(files) == [("bulk", "a.tar.gz"), ("top.tar",)]
    root = tmp_path / "root"
    for parts in files:
        path = root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(article_xml() if path.suffix == ".nxml" else b"x")
    found = sorted(f.archive.relative_to(root).parts for f in discover([root]) if f.archive)
    assert found == sorted(discoverable_archives(files))
