"""Uploaded article packages: store them durably for the worker, and unpack zipped JATS folders.

``POST /api/articles`` accepts a PMC package (``.tar.gz`` / ``.tgz``, recognised by its gzip magic
bytes) or a ``.zip`` of a JATS folder (zip magic bytes). The upload is copied to
``<data_home>/uploads/<token>/<safe name>`` (temporary file in the same folder, fsync,
``os.replace``) so that a worker in another process, or after a restart, finds it. A ``.zip`` is
unpacked there too, because the indexer reads folders and tarballs but not zips. Tar and zip
members are checked and unpacked by :mod:`indexer.archives` (one set of rules for both, the same
ones ingestion applies).
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from indexer.archives import ZIP_MAGIC, ArchiveBudget, ArchiveError, ArchiveLimits, members, unpack_beside
from indexer.jats import MAX_XML_BYTES, HostileXMLError, parse_xml
from indexer.packages import XML_SUFFIXES, discoverable_archives
from training.fsio import CHUNK, atomic_file, show_name

GZIP_MAGIC = b"\x1f\x8b"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UploadError(ValueError):
    """An upload that cannot be accepted; ``str(exc)`` says why."""


class UnsafePackageError(UploadError):
    """A package refused on inspection: unsafe or oversized members, unreadable, hostile XML."""


def sniff_package(head: bytes) -> str:
    """``"tar.gz"`` or ``"zip"`` from the first bytes of an upload; UploadError otherwise."""
    if head.startswith(GZIP_MAGIC):
        return "tar.gz"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    raise UploadError("expected a PMC package (.tar.gz) or a .zip of a JATS folder")


def safe_name(filename: str | None, kind: str) -> str:
    """A file name safe to create: the client's base name reduced to ``[A-Za-z0-9._-]``."""
    base = PurePosixPath((filename or "").replace("\\", "/")).name
    base = _SAFE.sub("_", base).strip("._")[:120] or "package"
    suffix = ".tar.gz" if kind == "tar.gz" else ".zip"
    if not base.lower().endswith((suffix, ".tgz")):
        base += suffix
    return base


def save_upload(stream: BinaryIO, filename: str | None, uploads_dir: Path) -> Path:
    """Copy ``stream`` into a fresh folder under ``uploads_dir``; return the stored path.

    The kind is sniffed from the content (not the name); the write is atomic.
    """
    head = stream.read(8)
    kind = sniff_package(head)
    dest_dir = uploads_dir / uuid.uuid4().hex
    dest_dir.mkdir(parents=True, exist_ok=False)
    dest = dest_dir / safe_name(filename, kind)
    try:
        with atomic_file(dest) as out:
            out.write(head)
            shutil.copyfileobj(stream, out, CHUNK)
    except BaseException:
        shutil.rmtree(dest_dir, ignore_errors=True)
        raise
    return dest


def unzip_package(archive: Path, limits: ArchiveLimits) -> Path:
    """Unpack the zip ``archive`` into a folder beside it (``<stem>.d``); return that folder.

    The member rules and caps are :mod:`indexer.archives`' (the same as for tar packages).
    Idempotent: a job re-run after a crash finds the folder an earlier attempt completed.
    Raises UploadError for a corrupt zip or a member that breaks the caps or escapes the folder.
    """
    dest = archive.parent / (archive.name.removesuffix(".zip") + ".d")
    try:
        return unpack_beside(archive, dest, ArchiveBudget(limits))
    except ArchiveError as exc:
        raise UploadError(str(exc)) from exc


def inspect_package(path: Path, limits: ArchiveLimits) -> None:
    """Refuse a stored upload before it is queued, so that the client hears why (a 4xx).

    A ``.tar.gz`` is read member by member (nothing is written anywhere) under the rules of
    :mod:`indexer.archives`; a ``.zip`` is unpacked beside it by :func:`unzip_package` under the
    same rules (the job reuses that folder). The article XML files inside must not declare DTD
    entities (billion laughs, external entities), and no archive may sit where ingestion would
    unpack it (an upload is one level: a package inside the package is refused). Raises
    UnsafePackageError.
    """
    files: list[tuple[str, ...]] = []
    try:
        if path.name.lower().endswith(".zip"):
            folder = unzip_package(path, limits)
            for file in sorted(folder.rglob("*")):
                if file.is_file() and not file.is_symlink():
                    files.append(file.relative_to(folder).parts)
                    if file.name.lower().endswith(XML_SUFFIXES):
                        with file.open("rb") as fh:
                            _check_xml(file.name, fh.read(MAX_XML_BYTES + 1))
        else:
            with members(path, ArchiveBudget(limits)) as items:
                for member in items:
                    if member.open is None:
                        continue
                    files.append(member.parts)
                    if member.parts[-1].lower().endswith(XML_SUFFIXES) and member.size <= MAX_XML_BYTES:
                        with member.open() as src:
                            _check_xml(member.parts[-1], src.read(MAX_XML_BYTES + 1))
    except UnsafePackageError:
        raise
    except (UploadError, ArchiveError, OSError) as exc:
        raise UnsafePackageError(str(exc)) from exc
    nested = discoverable_archives(files)
    if nested:
        raise UnsafePackageError(
            f"member {show_name('/'.join(nested[0]))} is an archive inside the package; "
            "a package is unpacked one level only (nested archives are refused)"
        )


def _check_xml(name: str, data: bytes) -> None:
    """Refuse XML that declares DTD entities; other XML problems are the job's to report."""
    try:
        parse_xml(data)
    except HostileXMLError as exc:
        raise UnsafePackageError(f"{show_name(name)}: {exc}") from exc
    except ValueError:
        pass
