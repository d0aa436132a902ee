"""The `biomedsearch worker` command: runs queued jobs from the job table, fails cleanly on bad input."""

from __future__ import annotations

from pathlib import Path

from app_fixtures import HashEncoder
from typer.testing import CliRunner

from app.cli import cli
from app.jobs import enqueue
from indexer.catalogue import Job, make_engine, make_session_factory, migrate


def test_worker_once_runs_the_queue_and_reports(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setattr("training.encoders.load_encoder", lambda spec, device="auto", precision="auto": HashEncoder())
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'catalogue.db'}"
    home.mkdir()
    migrate(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    jid = enqueue(factory, "ingest", {"paths": [str(home / "uploads" / "x" / "missing.tar.gz")]})
    result = CliRunner().invoke(cli, ["worker", "--once", "--data-home", str(home), "--model", "stub"])
    assert result.exit_code == 0, result.output
    assert "worker done: 1 job(s) run" in result.output and "1 failed" in result.output
    with factory() as s:
        job = s.get(Job, jid)
        assert job is not None and job.state == "failed" and "no longer exist" in job.errors[-1]["message"]
    engine.dispose()


def test_worker_without_an_encoder_leaves_the_jobs_queued_and_says_why(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No model configured or exported: the job is not claimed (no attempt burnt), exit status 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BIOMEDSEARCH_MODEL", raising=False)
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'catalogue.db'}"
    home.mkdir()
    migrate(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    jid = enqueue(factory, "ingest", {"paths": [str(home / "uploads" / "x" / "pkg.tar.gz")]})
    result = CliRunner().invoke(cli, ["worker", "--once", "--data-home", str(home)])
    assert result.exit_code == 1, result.output
    assert "worker done: 0 job(s) run" in result.output and "1 queued" in result.output
    assert "1 queued job(s) wait for the encoder: no encoder configured" in " ".join(result.output.split())
    with factory() as s:
        job = s.get(Job, jid)
        assert job is not None and job.state == "queued" and job.attempts == 0 and job.errors == []
    engine.dispose()


def test_worker_with_an_unreachable_database_fails_without_traceback(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIOMEDSEARCH_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    result = CliRunner().invoke(cli, ["worker", "--once", "--data-home", str(tmp_path / "home")])
    assert result.exit_code != 0
    assert "cannot open the catalogue" in result.output
    assert "Traceback" not in result.output
