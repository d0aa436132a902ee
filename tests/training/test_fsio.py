"""training.fsio: the one home of atomic writes, sha256 and "a path stays inside"."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from training.fsio import (
    MAX_NAME_CHARS,
    UnsafePathError,
    atomic_file,
    atomic_path,
    create_new,
    file_sha256,
    is_inside,
    replace_dir,
    resolve_inside,
    safe_parts,
    show_name,
    write_atomic,
)


def test_write_atomic_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "doc.json"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["doc.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "doc.txt"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target, "w", encoding="utf-8") as fh:
        fh.write("half of the new")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.txt"]
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.txt"]


def test_atomic_path_sets_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "key"
    with atomic_path(target, mode=0o600) as tmp:
        tmp.write_bytes(b"x")
    assert (target.stat().st_mode & 0o777) == 0o600


def test_atomic_file_refuses_read_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic_file(tmp_path / "x", "rb"):
        pass


def test_replace_dir_swaps_a_folder_in(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    staged = tmp_path / ".model.tmp"
    staged.mkdir()
    (staged / "new.bin").write_bytes(b"new")
    replace_dir(staged, target)
    assert [p.name for p in target.iterdir()] == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the old copy is gone too


def test_file_sha256_matches_hashlib_over_several_blocks(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_create_new_never_overwrites_nor_follows_a_link(tmp_path: Path) -> None:
    with create_new(tmp_path / "a") as fh:
        fh.write(b"x")
    with pytest.raises(FileExistsError):
        create_new(tmp_path / "a")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        create_new(tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd", "\\windows\\system32", "a/../../b", "..", "C:evil.txt", "c:/x/y", "a\x00b",
        "x" * (MAX_NAME_CHARS + 1),
    ],
)
def test_safe_parts_refuses_names_that_climb_out(name: str) -> None:
    with pytest.raises(UnsafePathError) as info:
        safe_parts(name)
    assert len(str(info.value)) < 400  # a huge name is never echoed whole


def test_safe_parts_normalises_harmless_names() -> None:
    assert safe_parts("./a//b\\c.jpg") == ("a", "b", "c.jpg")
    assert safe_parts(".") == ()
    assert safe_parts("PMC1/fig:1.jpg") == ("PMC1", "fig:1.jpg")  # a colon past the first part is a name


def test_resolve_inside_follows_links(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "media").mkdir(parents=True)
    (home / "media" / "a.jpg").write_bytes(b"x")
    (home / "out").symlink_to(tmp_path)
    assert resolve_inside(home, "media/a.jpg") == (home / "media" / "a.jpg").resolve()
    with pytest.raises(UnsafePathError):
        resolve_inside(home, "out/secret")
    with pytest.raises(UnsafePathError):
        resolve_inside(home, "../home2/x")
    assert is_inside(home / "media" / "a.jpg", home)
    assert not is_inside(home / "out" / "x", home)


def test_show_name_cuts_long_names() -> None:
    assert show_name("abc") == "'abc'"
    shown = show_name("n" * 100_000)
    assert len(shown) < 200 and "100000 chars" in shown
