"""Backups of a data home: the catalogue (with its stored embeddings), index versions and media.

A backup is a folder::

    <backup>/manifest.json        what it holds: format, database dialect + checksum, every file
    <backup>/catalogue.sqlite     SQLite: a consistent copy taken with SQLite's online backup API
    <backup>/catalogue.pgdump     PostgreSQL: ``pg_dump --format=custom`` of the database
    <backup>/files/<path>         every other file of the data home (media/, indexes/, models/,
                                  uploads/ ...), at its path relative to the data home

Not copied: the live SQLite files (the snapshot replaces them), ``downloads/`` (a cache of fetched
packages), temporary and lock files, and symbolic links (never followed).

:func:`create_backup` writes into a temporary folder beside the destination and renames it into
place at the end, so a backup folder either is complete or does not exist. While the catalogue is
snapshotted and the indexes are copied it holds every index writer lock (the one
:meth:`indexer.publish.IndexStore.writer_lock` takes), so no version is published in between: the
indexes in the backup are exactly those the catalogue snapshot records. Media are copied after the
snapshot; image files are written before the rows that name them, so every image the snapshot
names is there.

:func:`restore_backup` checks the manifest (only relative paths inside the data home), refuses a
data home that holds anything unless ``force``, copies every file into a staging folder inside the
data home while verifying its sha256, and only then swaps the staged folders in and restores the
catalogue (SQLite: the file is replaced atomically; PostgreSQL: ``pg_restore --clean``). Nothing
is written outside the data home except the configured catalogue database itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from tqdm import tqdm

from training.fsio import atomic_path, copy_hashed, create_new, fsync_dir, fsync_tree, write_atomic

FORMAT = "biomedsearch-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = "files"
TABLES = ("articles", "figures", "embeddings", "index_versions", "jobs")
SKIP_TOP = ("downloads",)  # re-fetchable cache
_CHUNK = 1 << 20


class BackupError(ValueError):
    """A backup cannot be written or restored; ``str(exc)`` says why."""


@dataclass
class BackupReport:
    """What a backup or a restore did."""

    path: Path
    dialect: str
    files: int = 0
    bytes: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self, verb: str = "backed up") -> str:
        """One line."""
        rows = ", ".join(f"{n} {t}" for t, n in self.rows.items())
        return (
            f"{verb} catalogue ({self.dialect}: {rows}) and {self.files} files "
            f"({self.bytes / 1e6:.1f} MB) {'to' if verb == 'backed up' else 'from'} {self.path} "
            f"in {self.seconds:.1f}s"
        )


# --- helpers ---------------------------------------------------------------------------------------


def _sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other dialects; BackupError for in-memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise BackupError("an in-memory SQLite catalogue cannot be backed up")
    return Path(parsed.database).resolve()


def _dialect(url: str) -> str:
    name = make_url(url).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise BackupError(f"backups support SQLite and PostgreSQL catalogues, not {name}")
    return name


@contextlib.contextmanager
def _libpq(url: str) -> Iterator[str]:
    """A libpq connection URI for ``url``, valid inside the ``with`` block.

    The password never goes on argv: it is written to a private (0600) passfile in a temporary
    folder, named by the URI's ``passfile`` parameter and removed when the block ends. The child
    process inherits the caller's environment unchanged (this module reads none of it).
    """
    parsed = make_url(url)
    # (URL.set(password=None) would keep the password: None means "unchanged" there)
    plain = URL.create(
        "postgresql", username=parsed.username, host=parsed.host, port=parsed.port, database=parsed.database,
        query=parsed.query,
    )
    if parsed.password is None:
        yield plain.render_as_string(hide_password=False)
        return
    with tempfile.TemporaryDirectory(prefix="biomedsearch-pg-") as tmp:
        passfile = Path(tmp) / "pgpass"
        secret = str(parsed.password).replace("\\", "\\\\").replace(":", "\\:")
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"*:*:*:*:{secret}\n")
        yield plain.update_query_dict({"passfile": str(passfile)}).render_as_string(hide_password=False)


def _write_new(path: Path, src: IO[bytes]) -> tuple[str, int]:
    """Create ``path`` (never through a link, never over a file) from ``src``; (sha256, bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with create_new(path) as out:
        digest = copy_hashed(src, out)
        out.flush()
        os.fsync(out.fileno())
    return digest


def _is_temporary(name: str) -> bool:
    return name == ".lock" or (name.startswith(".") and (".tmp" in name or name.startswith((".unzip.", ".restore"))))


def _data_files(
    data_home: Path, exclude: set[Path], skip_top: tuple[str, ...] = SKIP_TOP
) -> Iterator[tuple[Path, str]]:
    """Regular files under ``data_home`` to back up, as (absolute path, relative posix path)."""
    for dirpath, dirs, files in os.walk(data_home):
        here = Path(dirpath)
        rel_dir = here.relative_to(data_home)
        dirs[:] = sorted(
            d
            for d in dirs
            if not (here / d).is_symlink()
            and not _is_temporary(d)
            and not (rel_dir == Path(".") and d in skip_top)
        )
        for name in sorted(files):
            path = here / name
            if path in exclude or _is_temporary(name) or path.is_symlink() or not path.is_file():
                continue
            yield path, (rel_dir / name).as_posix()


@contextlib.contextmanager
def _index_locks(index_dir: Path) -> Iterator[None]:
    """Hold the writer lock of every model's indexes under ``index_dir`` (sorted order)."""
    with contextlib.ExitStack() as stack:
        if index_dir.is_dir():
            for model_dir in sorted(p for p in index_dir.iterdir() if p.is_dir() and not p.is_symlink()):
                fh = stack.enter_context(open(model_dir / ".lock", "a+b"))
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                stack.callback(fcntl.flock, fh.fileno(), fcntl.LOCK_UN)
        yield


def _row_counts(url: str) -> tuple[dict[str, int], str | None]:
    """Rows per catalogue table and the Alembic revision of the database at ``url``."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
            rows = {
                t: int(conn.execute(sa.select(sa.func.count()).select_from(sa.table(t))).scalar_one())
                for t in TABLES
                if t in names
            }
            revision = None
            if "alembic_version" in names:
                revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    return rows, revision


# --- backup ----------------------------------------------------------------------------------------


def _snapshot_sqlite(db: Path, out: Path) -> None:
    """Copy the live SQLite database ``db`` to ``out`` with the online backup API, then check it."""
    if not db.is_file():
        raise BackupError(f"the catalogue {db} does not exist")
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst, pages=4096)
        dst.execute("PRAGMA journal_mode=DELETE")
        ok = dst.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":
            raise BackupError(f"the catalogue snapshot fails its integrity check: {ok}")
    finally:
        dst.close()
        src.close()


def _dump_postgres(url: str, out: Path, pg_dump: str) -> None:
    with _libpq(url) as uri:
        _run_pg_tool([pg_dump, "--format=custom", "--no-owner", "--no-privileges", f"--file={out}", uri])


def _run_pg_tool(cmd: list[str]) -> None:
    """Run a PostgreSQL client tool (``cmd[0]``); :class:`BackupError` when it is missing or fails."""
    name = Path(cmd[0]).name
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=24 * 3600)
    except FileNotFoundError as exc:
        raise BackupError(f"{cmd[0]} not found: install the PostgreSQL client tools") from exc
    if done.returncode != 0:
        raise BackupError(f"{name} failed: {done.stderr.strip()[-2000:]}")


def create_backup(
    data_home: Path,
    database_url: str,
    dest: Path,
    *,
    pg_dump: str = "pg_dump",
    progress: bool = True,
) -> BackupReport:
    """Back up the catalogue at ``database_url`` and the files of ``data_home`` into ``dest``.

    ``dest`` must not exist (or be an empty folder) and must not lie inside the data home. Returns
    a :class:`BackupReport`; raises BackupError with the reason otherwise.
    """
    started = time.perf_counter()
    data_home = Path(data_home).resolve()
    dest = Path(dest).resolve()
    dialect = _dialect(database_url)
    if not data_home.is_dir():
        raise BackupError(f"the data home {data_home} does not exist")
    if dest.is_relative_to(data_home):
        raise BackupError(f"the backup folder {dest} must lie outside the data home {data_home}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} already exists and is not an empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    report = BackupReport(dest, dialect)
    try:
        db_file = _sqlite_path(database_url)
        exclude = {Path(f"{db_file}{sfx}") for sfx in ("", "-wal", "-shm", "-journal")} if db_file else set()
        index_dir = data_home / "indexes"
        files: list[dict[str, Any]] = []
        bar = tqdm(desc="backup", unit="B", unit_scale=True, disable=not progress, leave=False)

        def copy(path: Path, rel: str) -> None:
            with open(path, "rb") as src:
                digest, size = _write_new(tmp / FILES / rel, src)
            files.append({"path": rel, "bytes": size, "sha256": digest})
            bar.update(size)

        with _index_locks(index_dir):
            if db_file is not None:
                db_name = "catalogue.sqlite"
                _snapshot_sqlite(db_file, tmp / db_name)
                report.rows, revision = _row_counts(f"sqlite:///{tmp / db_name}")
            else:
                db_name = "catalogue.pgdump"
                report.rows, revision = _row_counts(database_url)
                _dump_postgres(database_url, tmp / db_name, pg_dump)
            for path, rel in _data_files(index_dir, exclude):
                copy(path, f"indexes/{rel}")
        for path, rel in _data_files(data_home, exclude, (*SKIP_TOP, "indexes")):
            copy(path, rel)
        bar.close()
        with open(tmp / db_name, "rb") as fh:
            db_sha, db_bytes = copy_hashed(fh)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "source_data_home": str(data_home),
            "database": {
                "dialect": dialect,
                "file": db_name,
                "sha256": db_sha,
                "bytes": db_bytes,
                "revision": revision,
                "rows": report.rows,
            },
            "files": files,
        }
        write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        fsync_tree(tmp)
        if dest.exists():
            dest.rmdir()  # the empty folder the caller named
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.files = len(files)
    report.bytes = sum(int(f["bytes"]) for f in files) + db_bytes
    report.seconds = time.perf_counter() - started
    return report


# --- restore ---------------------------------------------------------------------------------------


def read_manifest(backup_dir: Path) -> dict[str, Any]:
    """The backup's manifest, checked for shape and for paths that stay inside the data home."""
    path = Path(backup_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise BackupError(f"{backup_dir} is not a backup: no {MANIFEST}") from exc
    except ValueError as exc:
        raise BackupError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(f"unsupported backup format version {manifest.get('format_version')!r}")
    db = manifest.get("database")
    if not isinstance(db, dict) or db.get("file") not in ("catalogue.sqlite", "catalogue.pgdump"):
        raise BackupError("the manifest names no catalogue file")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise BackupError("the manifest lists no files")
    seen: set[str] = set()
    for entry in files:
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(rel, str) or not isinstance(entry.get("sha256"), str):
            raise BackupError(f"malformed manifest entry {str(entry)[:200]}")
        safe_relative(rel)
        if rel in seen:
            raise BackupError(f"{rel!r} is listed twice")
        seen.add(rel)
    return manifest


def safe_relative(rel: str) -> PurePosixPath:
    """``rel`` as a path that stays inside the data home; BackupError for anything else."""
    pure = PurePosixPath(rel)
    if (
        not rel
        or "\\" in rel
        or "\x00" in rel
        or pure.is_absolute()
        or any(part in ("", ".", "..") for part in rel.split("/"))
        or _is_temporary(pure.parts[0])
    ):
        raise BackupError(f"refused: the backup names a path outside the data home: {rel[:200]!r}")
    return pure


def _home_is_empty(data_home: Path, database_url: str) -> str | None:
    """Why the data home / catalogue is not empty (None when it is)."""
    db_file = _sqlite_path(database_url)
    skip = {Path(f"{db_file}{sfx}") for sfx in ("", "-wal", "-shm", "-journal")} if db_file else set()
    if data_home.exists():
        for dirpath, _dirs, files in os.walk(data_home):
            for name in files:
                if Path(dirpath, name).resolve() not in skip:
                    return f"the data home {data_home} holds files (e.g. {Path(dirpath, name)})"
    if db_file is not None and not db_file.exists():
        return None
    try:
        rows, _ = _row_counts(database_url)
    except sa.exc.SQLAlchemyError as exc:
        raise BackupError(f"cannot open the target catalogue: {exc}") from exc
    used = {t: n for t, n in rows.items() if n}
    if used:
        return f"the target catalogue is not empty ({', '.join(f'{n} {t}' for t, n in used.items())})"
    return None


def restore_backup(
    backup_dir: Path,
    data_home: Path,
    database_url: str,
    *,
    force: bool = False,
    pg_restore: str = "pg_restore",
    progress: bool = True,
) -> BackupReport:
    """Restore ``backup_dir`` into ``data_home`` and the catalogue at ``database_url``.

    Verifies every checksum before anything of the data home is replaced; refuses a data home or
    catalogue that holds anything unless ``force``. Returns a :class:`BackupReport` (rows are those
    of the restored catalogue); raises BackupError with the reason otherwise.
    """
    started = time.perf_counter()
    backup_dir = Path(backup_dir).resolve()
    data_home = Path(data_home).resolve()
    manifest = read_manifest(backup_dir)
    db = manifest["database"]
    dialect = _dialect(database_url)
    if db.get("dialect") != dialect:
        raise BackupError(f"the backup holds a {db.get('dialect')} catalogue; the target is {dialect}")
    if backup_dir.is_relative_to(data_home) or data_home.is_relative_to(backup_dir):
        raise BackupError("the backup folder and the data home must not contain each other")
    if not force and (why := _home_is_empty(data_home, database_url)) is not None:
        raise BackupError(f"{why}; restore into an empty data home or pass --force to replace it")
    data_home.mkdir(parents=True, exist_ok=True)
    staging = data_home / f".restore-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    report = BackupReport(backup_dir, dialect)
    try:
        bar = tqdm(desc="verify+stage", unit="B", unit_scale=True, disable=not progress, leave=False)
        for entry in [*manifest["files"], {"path": f".db/{db['file']}", "sha256": db["sha256"]}]:
            rel = entry["path"]
            src = backup_dir / (db["file"] if rel.startswith(".db/") else f"{FILES}/{rel}")
            if src.is_symlink() or not src.is_file():
                raise BackupError(f"the backup lacks {rel} (or holds a link there)")
            with open(src, "rb") as fh:
                digest, size = _write_new(staging / rel, fh)
            if digest != entry["sha256"]:
                raise BackupError(f"checksum mismatch for {rel}: the backup is damaged")
            report.files += 0 if rel.startswith(".db/") else 1
            report.bytes += size
            bar.update(size)
        bar.close()
        _restore_catalogue(staging / ".db" / db["file"], database_url, pg_restore)
        old = data_home / f".restore-old-{uuid.uuid4().hex[:12]}"
        old.mkdir()
        for top in sorted(p.name for p in staging.iterdir() if p.name != ".db"):
            live = data_home / top
            if live.exists() or live.is_symlink():
                os.replace(live, old / top)
            os.replace(staging / top, live)
        fsync_dir(data_home)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _upgrade(database_url, db.get("revision"))
    _rebase_job_paths(database_url, manifest.get("source_data_home"), data_home)
    report.rows, _ = _row_counts(database_url)
    report.seconds = time.perf_counter() - started
    return report


def _upgrade(database_url: str, revision: object) -> None:
    """Bring a restored catalogue to this version's schema (it may come from an older release)."""
    from indexer.catalogue import migrate

    try:
        migrate(database_url)
    except Exception as exc:
        raise BackupError(
            f"the restored catalogue (schema revision {revision}) cannot be migrated by this version: {exc}"
        ) from exc


def _restore_catalogue(dump: Path, database_url: str, pg_restore: str) -> None:
    db_file = _sqlite_path(database_url)
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(db_file) as tmp:  # fsync, rename onto db_file, fsync the folder
            shutil.copyfile(dump, tmp)
            for sfx in ("-wal", "-shm", "-journal"):  # a stale WAL must never be replayed onto the copy
                Path(f"{db_file}{sfx}").unlink(missing_ok=True)
        return
    with _libpq(database_url) as uri:
        cmd = [
            pg_restore, "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
            "--exit-on-error", f"--dbname={uri}", str(dump),
        ]  # fmt: skip
        _run_pg_tool(cmd)


def _rebase_job_paths(database_url: str, old_home: str | None, new_home: Path) -> None:
    """Point unfinished jobs' upload paths at the restored data home (it may have moved)."""
    if not old_home or Path(old_home) == new_home:
        return
    from sqlalchemy.orm import Session

    from indexer.catalogue import Job
    from indexer.vocabulary import JobState

    engine = sa.create_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            for job in session.scalars(sa.select(Job).where(Job.state.in_(JobState.live()))):
                paths = job.payload.get("paths") if isinstance(job.payload, dict) else None
                if not paths:
                    continue
                moved = [
                    str(new_home / Path(p).relative_to(old_home)) if Path(p).is_relative_to(old_home) else p
                    for p in paths
                ]
                job.payload = {**job.payload, "paths": moved}
    finally:
        engine.dispose()
