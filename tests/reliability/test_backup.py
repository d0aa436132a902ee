"""``biomedsearch backup`` / ``restore``: round trips on SQLite and PostgreSQL give the same search
answers; damaged or hostile backups and non-empty targets are refused without writing anything.

Hostile backups (issue 17, finding 5) are built here: top-level dotfiles (``.env``), database
sidecars, links, unexpected entries, pickled or remote-code model folders, a PostgreSQL dump with
foreign objects, a restore as a PostgreSQL superuser, and queued jobs naming files outside the
data home's ``uploads/`` and ``downloads/``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from reliability_fixtures import (
    FAKE_MODEL_ID,
    FakeEncoder,
    article_package,
    assert_consistent,
    jpeg,
    make_settings,
)
from sqlalchemy import select
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from app.main import create_app
from indexer import backup as backup_mod
from indexer.backup import BackupError, create_backup, read_manifest, restore_backup
from indexer.catalogue import Job, make_engine, make_session_factory, migrate
from indexer.vocabulary import JobState

ARTICLES = {1001: 2, 1002: 3, 1003: 1, 1004: 2}


def _build(settings: Settings, tmp: Path) -> None:
    """Ingest, embed (fake encoder) and index a few articles; queue one upload job."""
    from app.jobs import enqueue
    from indexer.embeddings import embed_pending
    from indexer.index_update import update_indexes
    from indexer.ingest import ingest_paths

    url = settings.resolved_database_url
    migrate(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    pkgs = []
    for pmcid, n in ARTICLES.items():
        pkg = tmp / f"PMC{pmcid}.tar.gz"
        pkg.write_bytes(article_package(pmcid, n))
        pkgs.append(pkg)
    report = ingest_paths(pkgs, factory, settings.data_home, limits=settings.ingest_limits(), progress=False)
    assert len(report.article_ids) == len(ARTICLES), report.summary()
    embed_pending(factory, FakeEncoder(), settings.data_home, batch_size=4, progress=False)
    update_indexes(factory, settings.index_dir, FAKE_MODEL_ID, options=settings.index_options(), progress=False)
    upload = settings.data_home / "uploads" / "abc" / "PMC1005.tar.gz"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(article_package(1005, 1))
    enqueue(factory, "ingest", {"paths": [str(upload)]})
    engine.dispose()


def _answers(settings: Settings) -> dict[str, Any]:
    """What the API answers for a fixed set of text, image and figure requests."""
    out: dict[str, Any] = {}
    with TestClient(create_app(settings, encoder_loader=lambda s, d: FakeEncoder())) as c:
        for q in ("chest CT", "western blot of case 1002", "survival curve"):
            resp = c.get("/api/search", params={"q": q, "k": 20, "mode": "dense"})
            assert resp.status_code == 200, resp.text
            out[f"text:{q}"] = resp.json()
        for mode in ("text", "image"):
            resp = c.post(
                "/api/search/image", files={"file": ("q.jpg", jpeg(100201))}, data={"mode": mode, "k": "10"}
            )
            assert resp.status_code == 200, resp.text
            out[f"image:{mode}"] = resp.json()
        hits = out["text:chest CT"]["results"]
        assert len(hits) == sum(ARTICLES.values())
        first = hits[0]["id"]
        out["figure"] = c.get(f"/api/figures/{first}").json()
        out["image_bytes"] = c.get(f"/api/figures/{first}/image").content
        out["jobs"] = [{k: j[k] for k in ("id", "state", "kind")} for j in c.get("/api/jobs").json()["jobs"]]
    return out


@contextlib.contextmanager
def _limited_role(admin_url: str) -> Iterator[str]:
    """Hand the empty database at ``admin_url`` to a new role that is not a superuser (as a
    deployment's application role is) and yield its URL; drop the database and the role after."""
    import sqlalchemy as sa

    url = sa.engine.make_url(admin_url)
    role = f"bms_app_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE'))
        conn.execute(sa.text(f'ALTER DATABASE "{url.database}" OWNER TO "{role}"'))
    try:
        yield url.set(username=role, password=None).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


@pytest.fixture
def target_db(db_url: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Where to restore: None (the SQLite file in the new data home) or a fresh PostgreSQL database
    owned by a role that is not a superuser (the deployment's layout), dropped after the test."""
    if db_url.startswith("sqlite"):
        yield None
        return
    with _limited_role(str(request.getfixturevalue("empty_postgres_url"))) as url:
        yield url


def _source_settings(db_url: str, home: Path) -> Settings:
    return make_settings(home, None if db_url.startswith("sqlite") else db_url)


def test_round_trip_gives_identical_answers(db_url: str, target_db: str | None, tmp_path: Path) -> None:
    src = _source_settings(db_url, tmp_path / "home")
    _build(src, tmp_path)
    before = _answers(src)
    bdir = tmp_path / "backups" / "b1"
    report = create_backup(src.data_home, src.resolved_database_url, bdir, progress=False)
    assert report.rows["figures"] == sum(ARTICLES.values()) and report.rows["embeddings"] == 16
    manifest = read_manifest(bdir)
    paths = {f["path"] for f in manifest["files"]}
    assert any(p.startswith("media/") for p in paths) and any(p.endswith("/CURRENT") for p in paths)
    assert "uploads/abc/PMC1005.tar.gz" in paths
    assert not any(p.endswith((".lock", "catalogue.db")) for p in paths)
    assert not list(bdir.parent.glob(".*tmp*")), "the temporary backup folder must be renamed away"

    dst = make_settings(tmp_path / "restored", target_db)
    restored = restore_backup(bdir, dst.data_home, dst.resolved_database_url, progress=False)
    assert restored.rows == report.rows
    after = _answers(dst)
    assert after == before
    engine = make_engine(dst.resolved_database_url)
    factory = make_session_factory(engine)
    expected = {f"pmcid:PMC{p}": n for p, n in ARTICLES.items()}
    assert_consistent(factory, dst.data_home, dst.index_dir, FAKE_MODEL_ID, expected)
    with factory() as s:
        job = s.scalars(select(Job).where(Job.state == "queued")).one()
        moved = Path(job.payload["paths"][0])
        assert moved == dst.data_home / "uploads" / "abc" / "PMC1005.tar.gz" and moved.is_file()
    engine.dispose()

    # a data home / catalogue that holds data is refused, unless --force
    with pytest.raises(BackupError, match=r"not empty|holds files"):
        restore_backup(bdir, dst.data_home, dst.resolved_database_url, progress=False)
    restore_backup(bdir, dst.data_home, dst.resolved_database_url, force=True, progress=False)
    assert _answers(dst) == before
    assert not [p for p in dst.data_home.iterdir() if p.name.startswith(".restore")]


def test_cli_backup_and_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in [k for k in __import__("os").environ if k.startswith("BIOMEDSEARCH_")]:
        monkeypatch.delenv(key)
    src = make_settings(tmp_path / "home")
    _build(src, tmp_path)
    runner = CliRunner()
    bdir = tmp_path / "bk"
    result = runner.invoke(cli, ["backup", str(bdir), "--data-home", str(src.data_home), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "backed up catalogue (sqlite" in result.output
    again = runner.invoke(cli, ["backup", str(bdir), "--data-home", str(src.data_home), "--no-progress"])
    assert again.exit_code != 0 and "already exists" in again.output
    inside = runner.invoke(cli, ["backup", str(src.data_home / "b"), "--data-home", str(src.data_home)])
    assert inside.exit_code != 0 and "outside the data home" in inside.output
    refused = runner.invoke(cli, ["restore", str(bdir), "--data-home", str(src.data_home), "--no-progress"])
    assert refused.exit_code != 0 and "--force" in refused.output and "Traceback" not in refused.output
    new_home = tmp_path / "new"
    ok = runner.invoke(cli, ["restore", str(bdir), "--data-home", str(new_home), "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "restored catalogue (sqlite: 4 articles, 8 figures, 16 embeddings" in ok.output
    assert (new_home / "catalogue.db").is_file()


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_damaged_or_hostile_backups_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    src = make_settings(tmp_path / "home")
    _build(src, tmp_path)
    good = tmp_path / "good"
    create_backup(src.data_home, src.resolved_database_url, good, progress=False)
    target = make_settings(tmp_path / "target")
    target.data_home.mkdir()

    def variant(name: str, change: Any) -> Path:
        path = tmp_path / name
        shutil.copytree(good, path)
        change(path)
        return path

    def flip_media(path: Path) -> None:
        media = sorted((path / "files" / "media").rglob("*.*"))[0]
        data = bytearray(media.read_bytes())
        data[len(data) // 2] ^= 0xFF
        media.write_bytes(bytes(data))

    def flip_db(path: Path) -> None:
        with open(path / "catalogue.sqlite", "r+b") as fh:
            fh.seek(200)
            fh.write(b"\xff\xfe")

    def add_entry(rel: str) -> Any:
        def change(path: Path) -> None:
            manifest = json.loads((path / "manifest.json").read_text())
            manifest["files"].append({"path": rel, "bytes": 1, "sha256": "0" * 64})
            (path / "manifest.json").write_text(json.dumps(manifest))

        return change

    def link_instead_of_file(path: Path) -> None:
        manifest = json.loads((path / "manifest.json").read_text())
        victim = path / "files" / manifest["files"][0]["path"]
        victim.unlink()
        victim.symlink_to("/etc/hostname")

    cases = {
        "media": (flip_media, "checksum mismatch"),
        "db": (flip_db, "checksum mismatch"),
        "dotdot": (add_entry("../../escaped.txt"), "outside the data home"),
        "absolute": (add_entry("/tmp/escaped.txt"), "outside the data home"),
        "nested": (add_entry("media/../../escaped.txt"), "outside the data home"),
        "link": (link_instead_of_file, "link"),
        "missing-manifest": (lambda p: (p / "manifest.json").unlink(), "no manifest"),
        "bad-json": (lambda p: (p / "manifest.json").write_text("{"), "not valid JSON"),
    }
    for name, (change, message) in cases.items():
        bad = variant(name, change)
        with pytest.raises(BackupError, match=message):
            restore_backup(bad, target.data_home, target.resolved_database_url, progress=False)
        assert _tree(target.data_home) == [], f"{name}: something was written"
    assert not list(tmp_path.rglob("escaped.txt"))
    pg = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    with pytest.raises(BackupError, match="holds a sqlite catalogue"):
        restore_backup(good, target.data_home, pg, progress=False)


def test_a_failed_backup_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_settings(tmp_path / "home")
    _build(src, tmp_path)
    real = backup_mod._write_new
    calls = {"n": 0}

    def failing(path: Path, fh: Any) -> tuple[str, int]:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(path, fh)

    monkeypatch.setattr(backup_mod, "_write_new", failing)
    dest = tmp_path / "out" / "b"
    with pytest.raises(OSError, match="No space"):
        create_backup(src.data_home, src.resolved_database_url, dest, progress=False)
    assert not dest.exists() and list((tmp_path / "out").iterdir()) == []


# --- hostile backups (issue 17, finding 5) ---------------------------------------------------------


def _add_file(backup: Path, rel: str, data: bytes) -> None:
    """Put ``data`` at ``files/<rel>`` and list it in the manifest with its true checksum (so only
    the allow-lists, not the checksums, can refuse it)."""
    path = backup / "files" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["files"].append({"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    (backup / "manifest.json").write_text(json.dumps(manifest))


def _model_folder(backup: Path, name: str, **overrides: Any) -> None:
    """A model folder shaped like the project's exports, with ``overrides`` per file (JSON docs)."""
    config = {"model_cfg": {"embed_dim": 16, "vision_cfg": {"timm_model_name": "resnet18"},
                            "text_cfg": {"hf_model_name": "sentence-transformers/all-MiniLM-L6-v2",
                                         "hf_tokenizer_name": "sentence-transformers/all-MiniLM-L6-v2"}}}  # fmt: skip
    files: dict[str, Any] = {
        "open_clip_config.json": config,
        "tokenizer_config.json": {"do_lower_case": True, "tokenizer_class": "BertTokenizer"},
        "config.json": {"model_type": "bert", "hidden_size": 8},
    }
    files.update(overrides)
    for fname, doc in files.items():
        _add_file(backup, f"models/{name}/{fname}", doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    _add_file(backup, f"models/{name}/open_clip_model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")


def _with_text_cfg(**text: Any) -> dict[str, Any]:
    return {"model_cfg": {"embed_dim": 16, "text_cfg": {"hf_model_name": "org/tower", **text}}}


def test_backups_hold_only_what_this_project_writes(tmp_path: Path) -> None:
    src = make_settings(tmp_path / "home")
    _build(src, tmp_path)
    (src.data_home / ".env").write_text("BIOMEDSEARCH_API_KEY=planted\n")  # never backed up
    (src.data_home / "downloads").mkdir()
    (src.data_home / "downloads" / "PMC1.tar.gz").write_bytes(b"cache")
    good = tmp_path / "good"
    report = create_backup(src.data_home, src.resolved_database_url, good, progress=False)
    paths = {f["path"] for f in read_manifest(good)["files"]}
    assert {p.split("/")[0] for p in paths} <= {"media", "indexes", "uploads", "models"}
    assert ".env" not in paths and not any(p.startswith("downloads/") for p in paths)
    target = make_settings(tmp_path / "target")
    target.data_home.mkdir()
    restore_backup(good, target.data_home, target.resolved_database_url, progress=False)  # the real one passes
    assert report.files == len(paths)

    def variant(name: str, change: Any) -> Path:
        path = tmp_path / name
        shutil.copytree(good, path, symlinks=True)
        change(path)
        return path

    def link_folder(path: Path) -> None:
        (path / "files" / "media" / "elsewhere").symlink_to("/etc")

    def stray_file(path: Path) -> None:
        (path / "files" / "media" / "unlisted.jpg").write_bytes(b"x")

    cases: dict[str, tuple[Any, str]] = {
        "dotenv": (lambda p: _add_file(p, ".env", b"BIOMEDSEARCH_API_KEY=x\n"), "not something a BiomedSearch backup"),
        "top-db": (lambda p: _add_file(p, "catalogue.db", b"SQLite format 3\x00"), "not something"),
        "wal-top": (lambda p: _add_file(p, "catalogue.db-wal", b"wal"), "not something"),
        "wal-nested": (lambda p: _add_file(p, "uploads/abc/catalogue.db-wal", b"wal"), "sidecar"),
        "shm": (lambda p: _add_file(p, "media/x.db-shm", b"shm"), "sidecar"),
        "journal": (lambda p: _add_file(p, "indexes/x-journal", b"j"), "sidecar"),
        "hidden": (lambda p: _add_file(p, "media/.env", b"x"), "hidden"),
        "downloads": (lambda p: _add_file(p, "downloads/PMC1.tar.gz", b"x"), "not something"),
        "link-folder": (link_folder, "link"),
        "stray": (stray_file, "unexpected entry"),
        "extra-top": (lambda p: (p / "run.sh").write_text("rm -rf /"), "unexpected entry"),
        "pickle": (lambda p: _model_folder(p, "evil", **{"open_clip_pytorch_model.bin": b"\x80\x04cos\nsystem\n."}),
                   "no pickled weights"),
        "code": (lambda p: _model_folder(p, "evil", **{"tokenization_evil.py": b"import os"}), "no code"),
        "remote-code": (lambda p: _model_folder(p, "evil", **{"config.json": {"auto_map": {"AutoModel": "x.Y"}}}),
                        "auto_map"),
        "trust": (lambda p: _model_folder(p, "evil", **{"open_clip_config.json": _with_text_cfg(
            tokenizer_kwargs={"trust_remote_code": True})}), "trust_remote_code"),
        "kwarg": (lambda p: _model_folder(p, "evil", **{"open_clip_config.json": _with_text_cfg(
            tokenizer_kwargs={"cache_dir": "/etc"})}), "tokenizer kwarg 'cache_dir' is not allowed"),
        "tower-path": (lambda p: _model_folder(p, "evil", **{"open_clip_config.json": _with_text_cfg(
            hf_model_name="/home/victim/model")}), "hub id"),
        "tok-setting": (lambda p: _model_folder(p, "evil", **{"tokenizer_config.json": {
            "tokenizer_class": "BertTokenizer", "from_pretrained_hook": "x"}}), "not allowed"),
        "tok-file": (lambda p: _model_folder(p, "evil", **{"tokenizer_config.json": {
            "vocab_file": "../../../etc/passwd"}}), "must name a file of the model folder"),
    }  # fmt: skip
    fresh = make_settings(tmp_path / "fresh")
    fresh.data_home.mkdir()
    for name, (change, message) in cases.items():
        bad = variant(name, change)
        with pytest.raises(BackupError, match=message):
            restore_backup(bad, fresh.data_home, fresh.resolved_database_url, progress=False)
        assert _tree(fresh.data_home) == [], f"{name}: something was written"
    # a model folder shaped like the project's exports passes
    ok = variant("model-ok", lambda p: _model_folder(p, "biomedclip-tiny"))
    restore_backup(ok, fresh.data_home, fresh.resolved_database_url, progress=False)
    assert (fresh.data_home / "models" / "biomedclip-tiny" / "open_clip_config.json").is_file()


def test_backup_refuses_a_model_a_restore_would_refuse(tmp_path: Path) -> None:
    src = make_settings(tmp_path / "home")
    _build(src, tmp_path)
    model = src.data_home / "models" / "tower"
    model.mkdir(parents=True)
    (model / "open_clip_config.json").write_text(json.dumps(_with_text_cfg(tokenizer_kwargs={"trust_remote_code": 1})))
    (model / "weights.bin").write_bytes(b"pickle")
    with pytest.raises(BackupError, match=r"trust_remote_code.*fix or remove that model"):
        create_backup(src.data_home, src.resolved_database_url, tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()


def _tamper_jobs(backup: Path, home: Path, payloads: list[dict[str, Any]]) -> None:
    """Insert queued jobs with ``payloads`` into the backup's SQLite catalogue; fix the manifest's checksum."""
    db = backup / "catalogue.sqlite"
    con = sqlite3.connect(db)
    with con:
        for payload in payloads:
            con.execute(
                "INSERT INTO jobs (kind, state, payload, progress, counts, errors, attempts, created_at) "
                "VALUES ('ingest', 'queued', ?, 0, '{}', '[]', 0, '2026-01-01 00:00:00')",
                (json.dumps(payload),),
            )
    con.close()
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["database"]["sha256"] = hashlib.sha256(db.read_bytes()).hexdigest()
    (backup / "manifest.json").write_text(json.dumps(manifest))


def test_restored_jobs_may_only_name_uploads_and_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_settings(tmp_path / "home")
    _build(src, tmp_path)
    bdir = tmp_path / "bk"
    create_backup(src.data_home, src.resolved_database_url, bdir, progress=False)
    old = src.data_home
    hostile = [
        {"paths": ["/etc/passwd"]},
        {"paths": [f"{old}/uploads/../catalogue.db"]},
        {"paths": [f"{old}/media"]},
        {"paths": "not-a-list"},
        {"paths": [str(old / "uploads")]},  # the folder itself, not a file in it
    ]
    _tamper_jobs(bdir, old, [*hostile, {"paths": [f"{old}/downloads/PMC7.tar.gz"]}])
    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("BIOMEDSEARCH_")]:
        monkeypatch.delenv(key)
    new_home = tmp_path / "new"
    result = CliRunner().invoke(cli, ["restore", str(bdir), "--data-home", str(new_home), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.count("marked failed") == len(hostile), result.output
    engine = make_engine(f"sqlite:///{new_home / 'catalogue.db'}")
    with make_session_factory(engine)() as s:
        jobs = {j.id: j for j in s.scalars(select(Job))}
    engine.dispose()
    failed = [j for j in jobs.values() if j.state == JobState.FAILED]
    queued = [j for j in jobs.values() if j.state == JobState.QUEUED]
    assert len(failed) == len(hostile) and all(j.stage == "restore" for j in failed)
    messages = sorted(j.errors[-1]["message"] for j in failed)
    assert sum("only read files under the data home's uploads/ and downloads/" in m for m in messages) == 4
    assert sum("must be a list" in m for m in messages) == 1
    # the original upload job and the downloads one stay queued, rebased onto the new data home
    assert sorted(Path(j.payload["paths"][0]).parent.name for j in queued) == ["abc", "downloads"]
    assert all(Path(j.payload["paths"][0]).is_relative_to(new_home) for j in queued)


def _pg_source(url: str, tmp: Path, extra_sql: str | None) -> Path:
    """A PostgreSQL data home with a few articles (+ ``extra_sql`` run in its database), backed up."""
    import sqlalchemy as sa

    src = make_settings(tmp / "pg-home", url)
    _build(src, tmp)
    if extra_sql:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(extra_sql))
        engine.dispose()
    out = tmp / f"pg-backup-{uuid.uuid4().hex[:6]}"
    create_backup(src.data_home, src.resolved_database_url, out, progress=False)
    return out


@pytest.mark.parametrize(
    ("extra_sql", "message"),
    [
        ("CREATE TABLE public.planted (x int)", "unknown table"),
        ("CREATE FUNCTION public.biomedsearch_x() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",
         "SECURITY DEFINER"),
        ("CREATE FUNCTION public.helper() RETURNS int LANGUAGE sql AS 'SELECT 1'", "unknown function"),
        ("CREATE SCHEMA planted; CREATE TABLE planted.t (x int)", "never writes"),
    ],
)
def test_postgres_dumps_hold_only_this_schema(
    empty_postgres_url: str, tmp_path: Path, extra_sql: str, message: str
) -> None:
    bdir = _pg_source(empty_postgres_url, tmp_path, extra_sql)
    import sqlalchemy as sa

    target_admin = (
        sa.engine.make_url(empty_postgres_url)
        .set(database=f"bms_t_{uuid.uuid4().hex[:10]}")
        .render_as_string(hide_password=False)
    )
    admin = sa.create_engine(sa.engine.make_url(empty_postgres_url).set(database="postgres"),
                             isolation_level="AUTOCOMMIT")  # fmt: skip
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{sa.engine.make_url(target_admin).database}"'))
    admin.dispose()
    with _limited_role(target_admin) as target_url:
        home = tmp_path / "pg-target"
        with pytest.raises(BackupError, match=message):
            restore_backup(bdir, home, target_url, progress=False)
        assert _tree(home) == [], "something was written"
        engine = sa.create_engine(target_url)
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == [], "the target catalogue was touched"
        engine.dispose()


def test_postgres_restore_as_superuser_is_refused_unless_allowed(empty_postgres_url: str, tmp_path: Path) -> None:
    import sqlalchemy as sa

    bdir = _pg_source(empty_postgres_url, tmp_path, None)
    name = f"bms_t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(sa.engine.make_url(empty_postgres_url).set(database="postgres"),
                             isolation_level="AUTOCOMMIT")  # fmt: skip
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    superuser_url = sa.engine.make_url(empty_postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        home = tmp_path / "su-target"
        with pytest.raises(BackupError, match=r"is a superuser.*--allow-superuser"):
            restore_backup(bdir, home, superuser_url, progress=False)
        assert _tree(home) == []
        report = restore_backup(bdir, home, superuser_url, allow_superuser=True, progress=False)
        assert report.rows["figures"] == sum(ARTICLES.values())
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_the_worker_refuses_a_job_naming_files_outside_uploads_and_downloads(tmp_path: Path) -> None:
    """The same rule again when a worker starts a job (a row edited after the restore, or written
    by anything but the API): the job fails with the reason, nothing is read or ingested."""
    from app.jobs import Worker, enqueue

    settings = make_settings(tmp_path / "home")
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    factory = make_session_factory(engine)
    outside = tmp_path / "PMC1009.tar.gz"
    outside.write_bytes(article_package(1009, 1))  # a real package: only the rule can refuse it
    job_id = enqueue(factory, "ingest", {"paths": [str(outside)]})
    worker = Worker(settings, factory, FakeEncoder)
    assert worker.run_once() == job_id
    with factory() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.FAILED
        assert "only read files under the data home's uploads/ and downloads/" in job.errors[-1]["message"]
        from indexer.catalogue import Article

        assert s.scalars(select(Article)).first() is None
    engine.dispose()
