"""Archive unpacking, defined once: tar (``.tar.gz`` / ``.tgz`` / ``.tar``) and zip, one set of
member rules, one budget. Ingestion (:mod:`indexer.packages`) and uploads (:mod:`app.uploads`)
both unpack and inspect archives through this module only.

Member rules (the same for tar and zip):

- only regular files and folders; links (symbolic or hard), devices, FIFOs and sparse files are
  refused;
- the name is a safe relative path (:func:`training.fsio.safe_parts`): no absolute name, no
  ``..``, no drive or stream prefix (``C:``), no NUL, at most 4 KiB and 32 folders deep; a name is
  never echoed whole in an error (:func:`training.fsio.show_name`);
- ``__MACOSX/`` resource forks are passed over; a member written twice is refused;
- tar extended headers (GNU long names, pax records) are bounded *before* tarfile reads them:
  64 KiB per header, 8 in a row before one member, 32 MiB per archive (a 65 KB ``.tar.gz`` can
  otherwise declare a 64 MiB name that tarfile reads whole);
- a zip's entry count and central-directory size are read from its end-of-central-directory
  record before :class:`zipfile.ZipFile` parses the directory, and refused over the caps.

The budget (:class:`ArchiveBudget`): one object per ingest run or upload inspection counts the
members and unpacked bytes of every archive it unpacks and the nesting depth. An archive found
inside an unpacked archive draws from what its parent already holds, so a tarball of tarballs
cannot multiply the caps; the depth cap (1 by default: a PMC package never nests archives) refuses
a nested or self-reproducing archive with :class:`NestedArchiveError` long before any recursion
limit. What an archive charged is given back when its unpacked folder is removed, so a run over
many packages, one after the other, gets the per-package caps for each.
"""

from __future__ import annotations

import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from training.fsio import (
    CHUNK,
    DIR_MODE,
    MAX_NAME_CHARS,
    UnsafePathError,
    create_new,
    safe_parts,
    show_name,
)

MAX_MEMBER_DEPTH = 32  # folders in a member name (a PMC package uses one or two)
MAX_HEADER_BYTES = 64 * 1024  # one pax extended header
MAX_HEADER_CHAIN = 8  # extended headers in a row before one member
MAX_HEADER_TOTAL = 32 * 1024**2  # extended header bytes in one archive
_ZIP_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_ZIP_ENTRY_ALLOWANCE = 46 + MAX_NAME_CHARS + 4096  # fixed part + name + extra/comment, per entry
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# what reading a damaged archive raises (tarfile, zipfile, gzip/zlib, struct decoding, short files)
_UNREADABLE = (
    tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error,
    EOFError, OSError, NotImplementedError, RuntimeError,
)


class ArchiveError(ValueError):
    """An archive that cannot be unpacked: unreadable (this class) or refused (the subclasses)."""


class UnsafeArchiveError(ArchiveError):
    """An archive refused: a member escapes the folder, is a link or device, or a cap is hit."""


class NestedArchiveError(UnsafeArchiveError):
    """An archive inside an archive deeper than the budget's depth cap."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps for unpacking: members and bytes held at once, the largest member, nesting depth."""

    max_members: int
    max_bytes: int  # total unpacked bytes
    max_member_bytes: int
    max_depth: int = 1  # archives unpacked inside one another (1: a package, never a package in it)


class ArchiveBudget:
    """What one run (an ingest run, one upload's inspection) may unpack, shared by every archive in it."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.members = 0  # members held now (unpacked folders not yet removed)
        self.bytes = 0  # unpacked bytes held now
        self.depth = 0  # archives being unpacked or held, one inside the other

    @contextmanager
    def archive(self, name: str) -> Iterator[None]:
        """Enter one archive level for ``name``; what it charges is given back on exit.

        Raises NestedArchiveError when the depth cap is reached.
        """
        if self.depth >= self.limits.max_depth:
            raise NestedArchiveError(
                f"{show_name(name)} is an archive nested {self.depth + 1} deep; "
                f"at most {self.limits.max_depth} level(s) are unpacked"
            )
        members, size = self.members, self.bytes
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            self.members, self.bytes = members, size

    def charge_member(self) -> None:
        """Count one more member; UnsafeArchiveError over the member cap."""
        self.members += 1
        if self.members > self.limits.max_members:
            raise UnsafeArchiveError(f"more than {self.limits.max_members} members")

    def charge_bytes(self, name: str, size: int) -> None:
        """Count ``size`` unpacked bytes of member ``name``; UnsafeArchiveError over a cap."""
        if size > self.limits.max_member_bytes:
            raise UnsafeArchiveError(
                f"member {show_name(name)} is {size} bytes, over {self.limits.max_member_bytes}"
            )
        self.bytes += size
        if self.bytes > self.limits.max_bytes:
            raise UnsafeArchiveError(f"unpacks to more than {self.limits.max_bytes} bytes")


@dataclass(frozen=True)
class Member:
    """One checked archive member: its safe parts, and for files a way to read it."""

    name: str  # as written in the archive (show it with show_name)
    parts: tuple[str, ...]
    size: int  # declared unpacked size (0 for folders)
    open: Callable[[], IO[bytes]] | None  # None for folders

    @property
    def is_dir(self) -> bool:
        """True for a folder member."""
        return self.open is None


def is_zip(path: Path) -> bool:
    """True when ``path`` starts with zip magic bytes."""
    with open(path, "rb") as fh:
        return fh.read(4).startswith(ZIP_MAGIC)


# --- the member rules -------------------------------------------------------------------------------------


def _checked(name: str, kind: str) -> tuple[str, ...] | None:
    """The parts of member ``name`` of ``kind`` ("file", "dir", "link", "special"), or None to pass it over."""
    if kind in ("link", "special"):
        what = "link" if kind == "link" else "special file"
        raise UnsafeArchiveError(f"member {show_name(name)} is a {what}; refused")
    try:
        parts = safe_parts(name, what="member")
    except UnsafePathError as exc:
        raise UnsafeArchiveError(str(exc)) from None
    if parts and parts[0] == "__MACOSX":
        return None
    if not parts:
        if kind == "dir":
            return None  # the archive's own root ("./")
        raise UnsafeArchiveError(f"member {show_name(name)} has no usable name")
    if len(parts) > MAX_MEMBER_DEPTH:
        raise UnsafeArchiveError(f"member {show_name(name)} is {len(parts)} folders deep, over {MAX_MEMBER_DEPTH}")
    return parts


# --- tar ----------------------------------------------------------------------------------------------------


_EXTENDED = (
    tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
)


def _header_state(tar: tarfile.TarFile) -> dict[str, int]:
    """Extended-header counters kept on the archive being read: headers in a row, bytes in all."""
    state: dict[str, int] = vars(tar).setdefault("_bms_headers", {"chain": 0, "bytes": 0})
    return state


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversize or chained extended headers before tarfile reads them."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:  # tarfile's own per-header hook
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeArchiveError("a sparse member; refused")
        state = _header_state(tarfile_)
        if self.type not in _EXTENDED:
            state["chain"] = 0
            return tarfile.TarInfo._proc_member(self, tarfile_)  # type: ignore[attr-defined]
        gnu = self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
        cap = MAX_NAME_CHARS + 1 if gnu else MAX_HEADER_BYTES
        if self.size > cap:
            what = f"GNU long-name header of {self.size} bytes (names over {MAX_NAME_CHARS} characters"
            if not gnu:
                what = f"pax header of {self.size} bytes (extended headers over {MAX_HEADER_BYTES} bytes"
            raise UnsafeArchiveError(f"a {what} are refused)")
        state["chain"] += 1
        state["bytes"] += self.size
        if state["chain"] > MAX_HEADER_CHAIN:
            raise UnsafeArchiveError(f"more than {MAX_HEADER_CHAIN} extended headers before one member; refused")
        if state["bytes"] > MAX_HEADER_TOTAL:
            raise UnsafeArchiveError(f"extended headers over {MAX_HEADER_TOTAL} bytes in all; refused")
        return tarfile.TarInfo._proc_member(self, tarfile_)  # type: ignore[attr-defined]

    def _proc_gnusparse_10(self, next: Any, pax_headers: Any, tarfile_: tarfile.TarFile) -> None:
        raise UnsafeArchiveError("a sparse member; refused")


def _tar_members(path: Path, budget: ArchiveBudget) -> Iterator[Member]:
    with tarfile.open(path, mode="r:*", tarinfo=_BoundedTarInfo) as tar:
        while (info := tar.next()) is not None:
            budget.charge_member()
            if info.sparse is not None:
                raise UnsafeArchiveError(f"member {show_name(info.name)} is a sparse file; refused")
            kind = (
                "file" if info.isreg() else "dir" if info.isdir()
                else "link" if (info.issym() or info.islnk()) else "special"
            )
            parts = _checked(info.name, kind)
            if parts is None:
                continue
            if kind == "dir":
                yield Member(info.name, parts, 0, None)
                continue
            budget.charge_bytes(info.name, info.size)

            def opener(info: tarfile.TarInfo = info) -> IO[bytes]:
                src = tar.extractfile(info)
                if src is None:
                    raise UnsafeArchiveError(f"member {show_name(info.name)} cannot be read")
                return src

            yield Member(info.name, parts, info.size, opener)


# --- zip ----------------------------------------------------------------------------------------------------


def zip_directory_size(fh: IO[bytes]) -> tuple[int, int]:
    """(entries, central directory bytes) from a zip's end-of-central-directory record (zip64 too).

    Read the way :mod:`zipfile` finds it (the last 22 bytes, else a search of the last 64 KiB of
    comment), so the numbers are the ones ZipFile would then trust. ArchiveError when absent.
    """
    fh.seek(0, 2)
    size = fh.tell()
    tail_len = min(size, 22 + 0xFFFF)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = len(tail) - 22 if tail[-22:-18] == _ZIP_EOCD else tail.rfind(_ZIP_EOCD)
    if pos < 0 or len(tail) - pos < 22:
        raise ArchiveError("unreadable zip: no end-of-central-directory record")
    _sig, _disk, _cd_disk, _here, entries, cd_size, _cd_off, _clen = struct.unpack("<4s4H2LH", tail[pos : pos + 22])
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:  # zip64: the real numbers are in the zip64 record
        eocd_at = size - tail_len + pos
        if eocd_at < 20:
            raise ArchiveError("unreadable zip: zip64 locator missing")
        fh.seek(eocd_at - 20)
        locator = fh.read(20)
        if locator[:4] != _ZIP64_LOCATOR:
            raise ArchiveError("unreadable zip: zip64 locator missing")
        (record_at,) = struct.unpack("<Q", locator[8:16])
        fh.seek(record_at)
        record = fh.read(56)
        if len(record) < 56 or record[:4] != _ZIP64_EOCD:
            raise ArchiveError("unreadable zip: zip64 end record missing")
        entries, cd_size = struct.unpack("<QQ", record[32:48])
    return int(entries), int(cd_size)


def _zip_members(path: Path, budget: ArchiveBudget) -> Iterator[Member]:
    cap = budget.limits.max_members - budget.members
    with open(path, "rb") as fh:
        entries, cd_size = zip_directory_size(fh)
    if entries > cap:
        raise UnsafeArchiveError(f"zip declares {entries} members: more than {budget.limits.max_members} members")
    if cd_size > max(entries, 1) * _ZIP_ENTRY_ALLOWANCE:
        raise UnsafeArchiveError(f"zip central directory of {cd_size} bytes for {entries} members; refused")
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            budget.charge_member()
            # The high 16 bits hold a Unix mode when the zip was made on Unix; many writers (Python's
            # ``writestr``, Windows tools) leave the file-type bits 0: that is a plain file, not a link.
            file_type = stat.S_IFMT(info.external_attr >> 16)
            if file_type == stat.S_IFLNK:
                kind = "link"
            elif file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
                kind = "special"
            else:
                kind = "dir" if info.is_dir() else "file"
            parts = _checked(info.filename, kind)
            if parts is None:
                continue
            if kind == "dir":
                yield Member(info.filename, parts, 0, None)
                continue
            budget.charge_bytes(info.filename, info.file_size)

            def opener(info: zipfile.ZipInfo = info) -> IO[bytes]:
                return zf.open(info)

            yield Member(info.filename, parts, info.file_size, opener)


# --- the public face ----------------------------------------------------------------------------------------


@contextmanager
def members(path: Path, budget: ArchiveBudget) -> Iterator[Iterator[Member]]:
    """Open the tar or zip ``path`` (sniffed by content) and yield an iterator of its checked members.

    Every rule of the module docstring is applied as the iterator advances (members and declared
    bytes are charged to ``budget``); nothing is written. Raises UnsafeArchiveError for a refused
    member, ArchiveError for an unreadable archive. The caller reads a file member through
    ``member.open()`` while the iterator is positioned on it.
    """
    try:
        yield _zip_members(path, budget) if is_zip(path) else _tar_members(path, budget)
    except ArchiveError:
        raise
    except _UNREADABLE as exc:
        detail = f"{type(exc).__name__}: {str(exc)[:200]}"
        raise ArchiveError(f"{show_name(path.name)}: unreadable archive: {detail}") from exc


def _copy_capped(src: IO[bytes], out: IO[bytes], member: Member) -> None:
    """Copy ``src`` to ``out``; a member that unpacks to more than it declared is refused."""
    written = 0
    while chunk := src.read(CHUNK):
        written += len(chunk)
        if written > member.size:
            raise UnsafeArchiveError(f"member {show_name(member.name)} unpacks to more bytes than it declares")
        out.write(chunk)


def extract(path: Path, dest: Path, budget: ArchiveBudget) -> None:
    """Unpack the tar or zip ``path`` into the existing empty folder ``dest`` under ``budget``.

    Only regular files (0644) and folders (0755) are written, never over one another or through a
    link. Raises UnsafeArchiveError / ArchiveError (see :func:`members`); the caller discards
    ``dest`` on error.
    """
    with members(path, budget) as items:
        for member in items:
            target = dest.joinpath(*member.parts)
            if member.open is None:
                target.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
                continue
            target.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            if target.exists() or target.is_symlink():
                raise UnsafeArchiveError(f"member {show_name(member.name)} appears twice")
            with member.open() as src, create_new(target) as out:
                _copy_capped(src, out, member)


@contextmanager
def unpacked(archive: Path, budget: ArchiveBudget, tmp_root: Path | None = None) -> Iterator[Path]:
    """Unpack ``archive`` into a fresh temporary folder (under ``tmp_root`` when given, created if
    missing) at the budget's next depth, yield it, then delete it and give its charge back.

    Raises NestedArchiveError past the depth cap (nothing is unpacked then), and what
    :func:`extract` raises.
    """
    with budget.archive(archive.name):
        if tmp_root is not None:
            tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="bms-pkg-", dir=tmp_root))
        try:
            extract(archive, tmp, budget)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if tmp_root is not None:
                with suppress(OSError):  # only when empty (another run may be using it)
                    tmp_root.rmdir()


def unpack_beside(archive: Path, dest: Path, budget: ArchiveBudget) -> Path:
    """Unpack ``archive`` into ``dest`` (a new folder beside it), atomically: the members go to a
    hidden temporary folder renamed onto ``dest`` when complete. Idempotent: an existing ``dest``
    (a completed earlier attempt) is returned as is; temporary folders of killed attempts are removed.
    """
    if dest.is_dir():
        return dest
    for stale in dest.parent.glob(".unzip.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unzip.", dir=dest.parent))
    try:
        with budget.archive(archive.name):
            extract(archive, tmp, budget)
        tmp.replace(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
