"""Finding ingestible sources under the paths a user gives, and unpacking archives safely.

A path may be:

- a PMC OA package (``.tar.gz`` / ``.tgz`` / ``.tar``): unpacked into a temporary directory by
  :func:`indexer.archives.unpacked` (its member rules and budget), then searched like a directory;
- an article folder (a directory holding ``*.nxml`` / ``*.xml``): each XML is one article, its
  images resolve against that folder;
- a bare XML file (any name; sniffed): one article whose images resolve against its folder;
- a JSONL manifest of image/caption pairs (``.jsonl``);
- a directory holding any of these (searched recursively; inside a directory, ``.jsonl`` files
  count only when their first line has an ``image`` field, so ``jats/manifest.jsonl``-style
  metadata files are passed over and reported).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
XML_SUFFIXES = (".nxml", ".xml")


class PackageError(ValueError):
    """A path cannot be ingested (missing, unsupported or unreadable)."""


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
    origin: str | None = None  # for an archive: how to name it in reports ("<outer>!<member>" inside one)


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
            yield Found(archive=entry, origin=origin_prefix + entry.name)
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
            yield Found(archive=path, origin=str(path))
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


def discoverable_archives(files: Iterable[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Of the files (as path parts) of an unpacked tree, those :func:`walk_extracted` would yield as
    archives to unpack: archive names in folders where neither the folder nor any folder above
    it holds an article XML (an article folder's other files are its media, never walked).

    Lets an upload refuse a nested archive from its member list before anything is queued.
    """
    files = list(files)
    with_xml = {parts[:-1] for parts in files if parts[-1].lower().endswith(XML_SUFFIXES)}
    found = []
    for parts in files:
        folders = [parts[:i] for i in range(len(parts))]
        if is_archive(Path(parts[-1])) and not any(f in with_xml for f in folders):
            found.append(parts)
    return found
