"""Uploaded article packages: store them durably for the worker, and unpack zipped JATS folders.

``POST /api/articles`` accepts a PMC package (``.tar.gz`` / ``.tgz``, recognised by its gzip magic
bytes) or a ``.zip`` of a JATS folder (zip magic bytes). The upload is copied to
``<data_home>/uploads/<token>/<safe name>`` (temporary file in the same folder, fsync,
``os.replace``) so that a worker in another process, or after a restart, finds it. A ``.zip`` is
unpacked there too, member by member under the same caps as tar packages (member count, total and
per-member unpacked bytes; no absolute paths, ``..``, links or special files), because the
indexer reads folders and tarballs but not zips.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from indexer.jats import MAX_XML_BYTES, HostileXMLError, parse_xml
from indexer.packages import XML_SUFFIXES, ArchiveLimits
from training.fsio import atomic_file

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_CHUNK = 1024 * 1024
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
            shutil.copyfileobj(stream, out, _CHUNK)
    except BaseException:
        shutil.rmtree(dest_dir, ignore_errors=True)
        raise
    return dest


def unzip_package(archive: Path, limits: ArchiveLimits) -> Path:
    """Unpack the zip ``archive`` into a folder beside it (``<stem>.d``); return that folder.

    Idempotent: a job re-run after a crash finds the folder an earlier attempt completed.

    Raises UploadError for a corrupt zip or a member that breaks the caps or escapes the folder.
    """
    dest = archive.parent / (archive.name.removesuffix(".zip") + ".d")
    if dest.is_dir():  # unpacked by an earlier attempt of the job (the rename below is atomic)
        return dest
    for stale in archive.parent.glob(".unzip.*"):  # left by an attempt killed mid-unpack
        shutil.rmtree(stale, ignore_errors=True)
    tmp_dest = Path(tempfile.mkdtemp(prefix=".unzip.", dir=archive.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > limits.max_members:
                raise UploadError(f"zip has {len(members)} members, over the cap of {limits.max_members}")
            total = 0
            for info in members:
                target = _member_target(tmp_dest, info)
                if target is None:
                    continue
                if info.file_size > limits.max_member_bytes:
                    raise UploadError(f"zip member {info.filename!r} is over {limits.max_member_bytes} bytes")
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as src, target.open("wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        total += len(chunk)
                        if written > limits.max_member_bytes or total > limits.max_bytes:
                            raise UploadError("zip unpacks to more bytes than allowed")
                        out.write(chunk)
        os.replace(tmp_dest, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        shutil.rmtree(tmp_dest, ignore_errors=True)
        raise UploadError(f"unreadable zip: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp_dest, ignore_errors=True)
        raise
    return dest


def inspect_package(path: Path, limits: ArchiveLimits) -> None:
    """Refuse a stored upload before it is queued, so that the client hears why (a 4xx).

    A ``.tar.gz`` is read header by header (its members are not written anywhere): no link or
    special file, no member escaping the folder, the member count and sizes within ``limits``; a
    ``.zip`` is unpacked beside it by :func:`unzip_package` under the same rules (the job reuses
    that folder). The article XML files inside must not declare DTD entities (billion laughs,
    external entities). Raises UnsafePackageError.
    """
    try:
        if path.name.lower().endswith(".zip"):
            folder = unzip_package(path, limits)
            for xml in sorted(folder.rglob("*")):
                if xml.is_file() and xml.name.lower().endswith(XML_SUFFIXES):
                    _check_xml(xml.name, xml.read_bytes()[: MAX_XML_BYTES + 1])
        else:
            _scan_tar(path, limits)
    except UnsafePackageError:
        raise
    except UploadError as exc:
        raise UnsafePackageError(str(exc)) from exc
    except (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise UnsafePackageError(f"unreadable package: {exc}") from exc


def _scan_tar(path: Path, limits: ArchiveLimits) -> None:
    count = total = 0
    with tarfile.open(path, mode="r:*") as tar:
        while (member := tar.next()) is not None:
            count += 1
            if count > limits.max_members:
                raise UnsafePackageError(f"package has more than {limits.max_members} members")
            if not (member.isfile() or member.isdir()):
                kind = "link" if (member.issym() or member.islnk()) else "special file"
                raise UnsafePackageError(f"package member {member.name!r} is a {kind}")
            parts = PurePosixPath(member.name.replace("\\", "/")).parts
            if member.name.startswith(("/", "\\")) or ".." in parts or "\x00" in member.name:
                raise UnsafePackageError(f"package member {member.name!r} escapes the folder")
            if member.size > limits.max_member_bytes:
                raise UnsafePackageError(f"package member {member.name!r} is over {limits.max_member_bytes} bytes")
            total += member.size
            if total > limits.max_bytes:
                raise UnsafePackageError(f"package unpacks to more than {limits.max_bytes} bytes")
            if member.isfile() and member.name.lower().endswith(XML_SUFFIXES) and member.size <= MAX_XML_BYTES:
                src = tar.extractfile(member)
                if src is not None:
                    _check_xml(member.name, src.read())


def _check_xml(name: str, data: bytes) -> None:
    """Refuse XML that declares DTD entities; other XML problems are the job's to report."""
    try:
        parse_xml(data)
    except HostileXMLError as exc:
        raise UnsafePackageError(f"{PurePosixPath(name).name}: {exc}") from exc
    except ValueError:
        pass


def _member_target(root: Path, info: zipfile.ZipInfo) -> Path | None:
    """Where ``info`` unpacks under ``root`` (None for folders); UploadError for unsafe members."""
    name = info.filename.replace("\\", "/")
    # The high 16 bits hold a Unix mode when the zip was made on Unix; many writers (Python's
    # ``writestr``, Windows tools) leave the file-type bits 0: that is a plain file, not a link.
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
        raise UploadError(f"zip member {info.filename!r} is a link or special file")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise UploadError(f"zip member {info.filename!r} escapes the folder")
    if info.is_dir() or not parts:
        return None
    if parts[0] == "__MACOSX":
        return None
    return root.joinpath(*parts)
