"""Finding ingestible sources under the paths a user gives, and unpacking archives safely.

A path may be:

- a PMC OA package (``.tar.gz`` / ``.tgz`` / ``.tar``): unpacked into a temporary directory by
  :func:`extract_archive` (regular files and folders only; no member may escape the folder; member
  count, member size and total size are capped), then searched like a directory;
- an article folder (a directory holding ``*.nxml`` / ``*.xml``): each XML is one article, its
  images resolve against that folder;
- a bare XML file (any name; sniffed): one article whose images resolve against its folder;
- a JSONL manifest of image/caption pairs (``.jsonl``);
- a directory holding any of these (searched recursively; inside a directory, ``.jsonl`` files
  count only when their first line has an ``image`` field, so ``jats/manifest.jsonl``-style
  metadata files are passed over and reported).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
XML_SUFFIXES = (".nxml", ".xml")
_CHUNK = 1024 * 1024


class PackageError(ValueError):
    """A path cannot be ingested (missing, unsupported or unreadable)."""


class UnsafeArchiveError(PackageError):
    """An archive was refused: a member escapes the folder, is a link or device, or a cap is hit."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps applied while unpacking one archive."""

    max_members: int
    max_bytes: int  # total unpacked bytes
    max_member_bytes: int


@dataclass(frozen=True)
class Source:
    """One ingestible item: an article XML file or a JSONL manifest."""

    kind: Literal["jats", "manifest"]
    path: Path  # the XML / JSONL file (inside a temp dir for archives)
    origin: str  # what to record as Article.source: the file, or "<archive>!<member path>"
    single: bool = True  # the XML is the only one in its folder (so other files there are its media)


@dataclass(frozen=True)
class Found:
    """What discovery yields: a source, an archive to unpack, or a path passed over with a reason."""

    source: Source | None = None
    archive: Path | None = None
    skipped: tuple[str, str] | None = None  # (path, reason)


def is_archive(path: Path) -> bool:
    """True for ``.tar.gz`` / ``.tgz`` / ``.tar`` file names."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _looks_like_xml(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(2048).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return False
    return head.startswith((b"<?xml", b"<!DOCTYPE", b"<article"))


def _is_pair_manifest(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    obj = json.loads(raw)
                    return isinstance(obj, dict) and "image" in obj
    except (OSError, ValueError):
        return False
    return False


def _walk_dir(directory: Path, origin_prefix: str) -> Iterator[Found]:
    entries = sorted(directory.iterdir(), key=lambda p: p.name)
    xmls = [p for p in entries if p.is_file() and p.name.lower().endswith(XML_SUFFIXES)]
    if xmls:  # an article folder: its XML files are articles, the rest is their media
        for xml in xmls:
            yield Found(source=Source("jats", xml, origin_prefix + xml.name, single=len(xmls) == 1))
        return
    for entry in entries:
        if entry.is_symlink():
            yield Found(skipped=(origin_prefix + entry.name, "symbolic link not followed"))
        elif entry.is_dir():
            yield from _walk_dir(entry, origin_prefix + entry.name + "/")
        elif is_archive(entry):
            yield Found(archive=entry)
        elif entry.name.lower().endswith(".jsonl"):
            if _is_pair_manifest(entry):
                yield Found(source=Source("manifest", entry, origin_prefix + entry.name))
            else:
                yield Found(skipped=(origin_prefix + entry.name, "JSONL without an 'image' field"))
        elif entry.name.lower().endswith(".zip"):
            yield Found(skipped=(origin_prefix + entry.name, "zip archives are not supported (use .tar.gz)"))


def discover(paths: list[Path]) -> Iterator[Found]:
    """Yield what each given path holds, in order (see the module docstring).

    Raises PackageError for a path that does not exist or that is not of a supported kind.
    """
    for path in paths:
        if not path.exists():
            raise PackageError(f"{path}: no such file or directory")
        if path.is_dir():
            yield from _walk_dir(path, f"{path.resolve()}/")
        elif is_archive(path):
            yield Found(archive=path)
        elif path.name.lower().endswith(".jsonl"):
            yield Found(source=Source("manifest", path, str(path.resolve())))
        elif _looks_like_xml(path):
            siblings = [p for p in path.parent.iterdir() if p.name.lower().endswith(XML_SUFFIXES)]
            yield Found(source=Source("jats", path, str(path.resolve()), single=len(siblings) <= 1))
        else:
            raise PackageError(
                f"{path}: not a package (.tar.gz), article folder, XML file or JSONL manifest"
            )


def walk_extracted(root: Path, archive: Path) -> Iterator[Found]:
    """Discovery inside an unpacked archive; origins read ``<archive name>!<member path>``."""
    yield from _walk_dir(root, f"{archive.name}!")


def _safe_member_path(dest: Path, name: str) -> Path:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or ".." in pure.parts or "\x00" in name:
        raise UnsafeArchiveError(f"member {name!r} escapes the package folder")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        raise UnsafeArchiveError(f"member {name!r} has no usable name")
    target = dest.joinpath(*parts)
    resolved_dest = dest.resolve()
    if not target.resolve().is_relative_to(resolved_dest):
        raise UnsafeArchiveError(f"member {name!r} escapes the package folder")
    return target


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    """Unpack ``archive`` into the existing empty directory ``dest``, refusing anything unsafe.

    Only regular files and directories are written (mode 0644 / 0755). Raises UnsafeArchiveError
    for links, devices, members escaping ``dest``, more than ``max_members`` members, a member over
    ``max_member_bytes`` or a total over ``max_bytes``; PackageError for an unreadable archive.
    The caller discards ``dest`` on error.
    """
    total = 0
    count = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            while True:
                member = tar.next()
                if member is None:
                    break
                count += 1
                if count > limits.max_members:
                    raise UnsafeArchiveError(f"more than {limits.max_members} members")
                if not (member.isfile() or member.isdir()):
                    kind = "link" if (member.issym() or member.islnk()) else "special file"
                    raise UnsafeArchiveError(f"member {member.name!r} is a {kind}; refused")
                target = _safe_member_path(dest, member.name)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True, mode=0o755)
                    continue
                if member.size > limits.max_member_bytes:
                    raise UnsafeArchiveError(
                        f"member {member.name!r} is {member.size} bytes, over {limits.max_member_bytes}"
                    )
                total += member.size
                if total > limits.max_bytes:
                    raise UnsafeArchiveError(f"unpacked size over {limits.max_bytes} bytes")
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                if target.exists() or target.is_symlink():
                    raise UnsafeArchiveError(f"member {member.name!r} appears twice")
                src = tar.extractfile(member)
                if src is None:
                    raise UnsafeArchiveError(f"member {member.name!r} cannot be read")
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, PackageError):
            raise
        raise PackageError(f"{archive.name}: cannot unpack: {exc}") from exc


@contextmanager
def unpacked(archive: Path, limits: ArchiveLimits, tmp_root: Path | None = None) -> Iterator[Path]:
    """Unpack ``archive`` into a fresh temporary directory (under ``tmp_root`` when given, created
    if missing), yield it, then delete it."""
    if tmp_root is not None:
        tmp_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bms-pkg-", dir=tmp_root))
    try:
        extract_archive(archive, tmp, limits)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp_root is not None:
            with contextlib.suppress(OSError):  # only when empty (another run may be using it)
                tmp_root.rmdir()
