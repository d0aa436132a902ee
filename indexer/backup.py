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

:func:`restore_backup` trusts nothing in the backup folder: it accepts only what
:func:`create_backup` writes (the allow-lists of :mod:`indexer.backup_policy`: files under
``media/``, ``indexes/``, ``models/`` and ``uploads/`` only, no dotfiles, database sidecars or links,
model folders without pickles, code or remote-code configs, a PostgreSQL dump of this schema
only), refuses a data home that holds anything unless ``force``, copies every file into a staging
folder inside the data home while verifying its sha256, checks the staged model configs, and only
then swaps the staged folders in and restores the catalogue (SQLite: the file is replaced
atomically; PostgreSQL: ``pg_restore --clean --no-owner --no-privileges``, refused when the
restoring role is a superuser unless ``allow_superuser``). Restored jobs that are still to run
and name files outside ``uploads/`` / ``downloads/`` are marked failed (:mod:`indexer.job_inputs`;
the worker checks the same rule again). Nothing is written outside the data home except the
configured catalogue database itself.
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

from indexer.backup_policy import (
    PRIVILEGED_ROLE_SQL,
    TOP_FOLDERS,
    BackupError,
    check_member,
    check_model_folders,
    check_pg_schema_sql,
    check_pg_toc,
    privileged_role,
    safe_relative,
)
from indexer.job_inputs import first_violation
from indexer.vocabulary import JobState
from training.fsio import atomic_path, copy_hashed, create_new, fsync_dir, fsync_tree, write_atomic

__all__ = ["BackupError", "BackupReport", "create_backup", "read_manifest", "restore_backup", "safe_relative"]

FORMAT = "biomedsearch-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = "files"
TABLES = ("articles", "figures", "embeddings", "index_versions", "jobs")
_CHUNK = 1 << 20


@dataclass
class BackupReport:
    """What a backup or a restore did."""

    path: Path
    dialect: str
    files: int = 0
    bytes: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # backup: files a restore would refuse
    refused_jobs: list[str] = field(default_factory=list)  # restore: jobs marked failed, and why

    def warnings(self) -> list[str]:
        """Lines to show beside the summary: what was left out or neutralised."""
        out = []
        if self.skipped:
            out.append(
                f"left out {len(self.skipped)} file(s) a restore would refuse (e.g. {self.skipped[0][:200]})"
            )
        out.extend(self.refused_jobs)
        return out

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


def _data_files(root: Path, exclude: set[Path]) -> Iterator[tuple[Path, str]]:
    """Regular files under ``root`` to back up, as (absolute path, relative posix path): no links
    (never followed), no temporary or lock files, nothing in ``exclude``."""
    for dirpath, dirs, files in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink() and not _is_temporary(d))
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
            try:
                check_member(rel)
            except BackupError:
                report.skipped.append(rel)
                return
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
        for top in TOP_FOLDERS:  # downloads/ (a re-fetchable cache) and anything else stay out
            if top != "indexes" and (data_home / top).is_dir() and not (data_home / top).is_symlink():
                for path, rel in _data_files(data_home / top, exclude):
                    copy(path, f"{top}/{rel}")
        bar.close()
        try:  # a model a restore would refuse makes the backup useless: say so now
            check_model_folders(tmp / FILES / "models")
        except BackupError as exc:
            raise BackupError(f"{exc}; fix or remove that model before backing up") from None
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
    if not isinstance(db.get("sha256"), str) or db.get("dialect") not in ("sqlite", "postgresql"):
        raise BackupError("the manifest's catalogue entry is malformed")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise BackupError("the manifest lists no files")
    seen: set[str] = set()
    for entry in files:
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(rel, str) or not isinstance(entry.get("sha256"), str):
            raise BackupError(f"malformed manifest entry {str(entry)[:200]}")
        check_member(rel)
        if rel in seen:
            raise BackupError(f"{rel!r} is listed twice")
        seen.add(rel)
    return manifest


def check_backup_tree(backup_dir: Path, manifest: dict[str, Any]) -> None:
    """The backup folder holds exactly what ``manifest`` says: ``manifest.json``, the catalogue file
    and the listed files under ``files/``; no links, no special files, nothing else."""
    listed = {f"{FILES}/{entry['path']}" for entry in manifest["files"]}
    expected = {MANIFEST, manifest["database"]["file"], *listed}
    folders = {FILES} | {str(PurePosixPath(p).parent) for p in listed}
    folders |= {str(parent) for p in list(folders) for parent in PurePosixPath(p).parents if str(parent) != "."}
    for dirpath, dirs, files in os.walk(backup_dir):
        here = Path(dirpath)
        for name in [*dirs, *files]:
            path = here / name
            rel = path.relative_to(backup_dir).as_posix()
            if path.is_symlink():
                raise BackupError(f"refused: the backup holds a link: {rel[:200]!r}")
            if path.is_dir():
                if rel not in folders:
                    raise BackupError(f"refused: the backup holds an unexpected folder: {rel[:200]!r}")
            elif not path.is_file() or rel not in expected:
                raise BackupError(f"refused: the backup holds an unexpected entry: {rel[:200]!r}")


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
    allow_superuser: bool = False,
    pg_restore: str = "pg_restore",
    progress: bool = True,
) -> BackupReport:
    """Restore ``backup_dir`` into ``data_home`` and the catalogue at ``database_url``.

    Checks the backup against :mod:`indexer.backup_policy` and verifies every checksum before
    anything of the data home is replaced; refuses a data home or catalogue that holds anything
    unless ``force``, and a PostgreSQL restore as a superuser unless ``allow_superuser``. Returns a
    :class:`BackupReport` (rows are those of the restored catalogue; ``refused_jobs`` the jobs it
    marked failed); raises BackupError with the reason otherwise.
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
    check_backup_tree(backup_dir, manifest)
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
        check_model_folders(staging / "models")
        _restore_catalogue(staging / ".db" / db["file"], database_url, pg_restore, allow_superuser)
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
    report.refused_jobs = _settle_jobs(database_url, manifest.get("source_data_home"), data_home)
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


def _restore_catalogue(dump: Path, database_url: str, pg_restore: str, allow_superuser: bool) -> None:
    db_file = _sqlite_path(database_url)
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(db_file) as tmp:  # fsync, rename onto db_file, fsync the folder
            shutil.copyfile(dump, tmp)
            for sfx in ("-wal", "-shm", "-journal"):  # a stale WAL must never be replayed onto the copy
                Path(f"{db_file}{sfx}").unlink(missing_ok=True)
        return
    _check_pg_dump(dump, database_url, pg_restore, allow_superuser)
    with _libpq(database_url) as uri:
        cmd = [
            pg_restore, "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
            "--exit-on-error", f"--dbname={uri}", str(dump),
        ]  # fmt: skip
        _run_pg_tool(cmd)


def _check_pg_dump(dump: Path, database_url: str, pg_restore: str, allow_superuser: bool) -> None:
    """Refuse a dump that holds anything but this project's schema, or a restore as a superuser
    (a dump is SQL that runs with the restoring role's rights) unless ``allow_superuser``."""
    from indexer.catalogue import Base

    if not allow_superuser:
        engine = sa.create_engine(database_url)
        try:
            with engine.connect() as conn:
                row = conn.execute(sa.text(PRIVILEGED_ROLE_SQL)).first()
                role = str(conn.execute(sa.text("SELECT current_user")).scalar())
        except sa.exc.SQLAlchemyError as exc:
            raise BackupError(f"cannot open the target catalogue: {str(exc)[:500]}") from exc
        finally:
            engine.dispose()
        if (why := privileged_role(tuple(row) if row is not None else None, role)) is not None:
            raise BackupError(
                f"{why}: restore as the application's own role (the owner of the database, not a "
                "superuser), or pass --allow-superuser for a backup you made yourself"
            )
    listing = _pg_tool_output([pg_restore, "--list", str(dump)])
    check_pg_toc(listing, frozenset(Base.metadata.tables))
    check_pg_schema_sql(_pg_tool_output([pg_restore, "--schema-only", "--no-owner", "--no-privileges", "-f", "-",
                                         str(dump)]))  # fmt: skip


def _pg_tool_output(cmd: list[str]) -> str:
    """The standard output of a PostgreSQL client tool run on a local file (BackupError on failure)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except FileNotFoundError as exc:
        raise BackupError(f"{cmd[0]} not found: install the PostgreSQL client tools") from exc
    if done.returncode != 0:
        raise BackupError(f"{Path(cmd[0]).name} cannot read the dump: {done.stderr.strip()[-1000:]}")
    return done.stdout


def _settle_jobs(database_url: str, old_home: str | None, new_home: Path) -> list[str]:
    """Point unfinished jobs' input paths at the restored data home (it may have moved), then mark
    failed every unfinished job that breaks :mod:`indexer.job_inputs`' rule; return one line per
    job so marked."""
    from sqlalchemy.orm import Session

    from indexer.catalogue import Job, utcnow

    refused: list[str] = []
    old = Path(old_home) if isinstance(old_home, str) and old_home else None
    engine = sa.create_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            for job in session.scalars(sa.select(Job).where(Job.state.in_(JobState.live()))):
                payload = job.payload if isinstance(job.payload, dict) else None
                paths = payload.get("paths") if payload else None
                if old is not None and old != new_home and isinstance(paths, list):
                    moved = [
                        str(new_home / Path(p).relative_to(old))
                        if isinstance(p, str) and Path(p).is_relative_to(old)
                        else p
                        for p in paths
                    ]
                    job.payload = payload = {**(payload or {}), "paths": moved}
                why = first_violation(payload, new_home)
                if why is None:
                    continue
                job.state, job.stage, job.worker, job.finished_at = JobState.FAILED, "restore", None, utcnow()
                job.errors = [*(job.errors if isinstance(job.errors, list) else []),
                              {"stage": "restore", "message": why[:500]}]  # fmt: skip
                refused.append(f"job {job.id} marked failed: {why}")
    finally:
        engine.dispose()
    return refused
