"""File safety, defined once for the whole project: atomic writes, fsync, sha256, paths kept inside.

Why this module lives in ``training``: the layering is app -> indexer -> training, and training
writes files too (tokenizers, checkpoints, exports, plots). ``training`` is the lowest layer, the
one package every other one may import, so the single definition sits here and ``indexer``,
``app`` and ``bench`` import it from here (there is no second copy in ``indexer``). It imports
only the standard library, so importing it never pulls in torch.

What it holds:

- :func:`atomic_file` / :func:`atomic_path` / :func:`write_atomic`: write to a temporary file in
  the target's own folder, flush + fsync, ``os.replace`` onto the target, fsync the folder. A
  reader sees the old file or the new one, never a part; on error the temporary file is removed.
  ``fsync=False`` leaves durability to a later barrier (:func:`sync_filesystem`), for batch
  writers; the rename is atomic either way.
- :func:`replace_dir`: swap a fully written folder into place (the same guarantees for folders).
- :func:`fsync_file`, :func:`fsync_dir`, :func:`fsync_tree`, :func:`sync_filesystem`: durability barriers.
- :func:`file_sha256`, :func:`copy_hashed`: streamed sha256 (never the whole file in memory).
- :func:`safe_parts`, :func:`resolve_inside`, :func:`is_inside`: a relative name that cannot
  climb out (no absolute path, ``..``, drive letter, NUL, over-long name), and "this path stays
  inside that folder" with links resolved.
- :data:`PRIVATE_FILE_MODE` / :data:`PRIVATE_DIR_MODE` and :func:`create_new`: files created
  exclusively, never through a link; :func:`private_dir` and :data:`PRIVATE_UMASK`: the data home
  is private to the service's user.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath, PurePosixPath
from typing import IO, Any

CHUNK = 1024 * 1024
MAX_NAME_CHARS = 4096  # longest relative name accepted (archive members, stored paths)
FILE_MODE = 0o644
DIR_MODE = 0o755
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


class UnsafePathError(ValueError):
    """A relative name that would leave its folder (absolute, ``..``, drive, NUL, too long)."""


def show_name(name: str, limit: int = 120) -> str:
    """``repr`` of ``name`` cut to ``limit`` characters, for error messages (never a whole huge name)."""
    if len(name) <= limit:
        return repr(name)
    return repr(name[:limit]) + f"... ({len(name)} chars)"


# --- durability ----------------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """fsync a directory so that the renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """fsync one file written by a writer that closed it (faiss, torch.save, savefig)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every regular file and every folder under ``root`` (``root`` included)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                fsync_file(path)
        fsync_dir(Path(dirpath))


def sync_filesystem(path: Path) -> None:
    """Make every write on the filesystem holding ``path`` durable (``syncfs``; else ``sync``)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


# --- atomic writes ---------------------------------------------------------------------------------------


@contextmanager
def atomic_path(path: Path, *, fsync: bool = True, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that needs a file name (torch.save,
    savefig, faiss); when the block ends cleanly the file is fsynced (``fsync``), given ``mode``
    when set, and renamed onto ``path``, then the folder is fsynced. On error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(
    path: Path, mode: str = "wb", *, fsync: bool = True, encoding: str | None = None, file_mode: int | None = None
) -> Iterator[IO[Any]]:
    """Yield an open temporary file beside ``path`` (``mode`` "wb" or "w"); when the block ends
    cleanly it is flushed, fsynced (``fsync``), renamed onto ``path`` and the folder fsynced.
    On error the temporary file is removed and ``path`` is untouched."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes only ('wb' or 'w'), not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if file_mode is not None:
            os.fchmod(fd, file_mode)
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp_name, path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | str, *, fsync: bool = True, file_mode: int | None = None) -> None:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` atomically (see :func:`atomic_file`)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path, "wb", fsync=fsync, file_mode=file_mode) as fh:
        fh.write(payload)


def replace_dir(staged: Path, target: Path) -> None:
    """Swap the fully written folder ``staged`` (a sibling of ``target``) into place at ``target``.

    ``staged`` is fsynced (files and folders) first; an existing ``target`` is moved aside and
    deleted after the swap; the parent folder is fsynced. A reader sees the old folder or the new
    one. On error ``staged`` is left for the caller to remove.
    """
    staged, target = Path(staged), Path(target)
    fsync_tree(staged)
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(staged, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if missing and make it private: ``0700`` when this process
    owns it (a folder owned by someone else is left as it is). Returns ``path``.

    The data home's root is made private this way at every entry point, so nothing below it (the
    catalogue, media, indexes, uploads) is readable by other users whatever its own mode; the CLI
    also sets the process umask to ``077`` so that new files are ``0600`` and folders ``0700``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o777 != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


PRIVATE_UMASK = 0o077  # what the CLI's processes create with: files 0600, folders 0700


def create_new(path: Path, *, file_mode: int = FILE_MODE) -> IO[bytes]:
    """Open ``path`` for writing, creating it: never over an existing file, never through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, file_mode)
    return os.fdopen(fd, "wb")


# --- hashing ---------------------------------------------------------------------------------------------


def copy_hashed(src: IO[bytes], dst: IO[bytes] | None = None) -> tuple[str, int]:
    """Read ``src`` to its end in 1 MiB blocks (copying them to ``dst`` when given); (sha256 hex, bytes)."""
    h = hashlib.sha256()
    n = 0
    while block := src.read(CHUNK):
        h.update(block)
        if dst is not None:
            dst.write(block)
        n += len(block)
    return h.hexdigest(), n


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes, streamed."""
    with open(path, "rb") as fh:
        return copy_hashed(fh)[0]


# --- paths that stay inside --------------------------------------------------------------------------------


def safe_parts(name: str, *, what: str = "path") -> tuple[str, ...]:
    """The parts of the relative name ``name`` (``/`` or ``\\`` separated), checked.

    Raises UnsafePathError for an absolute name, a ``..`` part, a drive or stream prefix (a
    ``:`` in the first part, e.g. ``C:``), a NUL byte or a name over MAX_NAME_CHARS characters.
    ``.`` and empty parts are dropped, so ``"./a//b"`` gives ``("a", "b")`` and ``"."`` gives ().
    """
    if len(name) > MAX_NAME_CHARS:
        raise UnsafePathError(f"{what} {show_name(name)} is longer than {MAX_NAME_CHARS} characters")
    if "\x00" in name:
        raise UnsafePathError(f"{what} {show_name(name)} holds a NUL byte")
    posix = name.replace("\\", "/")
    pure = PurePosixPath(posix)
    parts = tuple(p for p in pure.parts if p not in ("", "."))
    if posix.startswith("/") or pure.is_absolute() or ".." in parts or (parts and ":" in parts[0]):
        raise UnsafePathError(f"{what} {show_name(name)} escapes its folder")
    return parts


def is_inside(path: Path, base: Path) -> bool:
    """True when ``path`` (links resolved) is ``base`` (links resolved) or lies under it."""
    return Path(path).resolve().is_relative_to(Path(base).resolve())


def resolve_inside(base: Path, rel: str | PurePath, *, what: str = "path") -> Path:
    """``base / rel`` resolved, checked to stay inside ``base`` (links followed); UnsafePathError otherwise."""
    parts = safe_parts(str(rel) if isinstance(rel, PurePath) else rel, what=what)
    home = Path(base).resolve()
    target = home.joinpath(*parts).resolve()
    if not target.is_relative_to(home):
        raise UnsafePathError(f"{what} {show_name(str(rel))} leaves {home.name or home}")
    return target
