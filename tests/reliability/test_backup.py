"""``biomedsearch backup`` / ``restore``: round trips on SQLite and PostgreSQL give the same search
answers; damaged or hostile backups and non-empty targets are refused without writing anything."""

from __future__ import annotations

import json
import shutil
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


@pytest.fixture
def target_db(db_url: str, request: pytest.FixtureRequest) -> str | None:
    """Where to restore: None (the SQLite file in the new data home) or a fresh PostgreSQL database
    (the root conftest's ``empty_postgres_url``, dropped after the test)."""
    if db_url.startswith("sqlite"):
        return None
    return str(request.getfixturevalue("empty_postgres_url"))


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
