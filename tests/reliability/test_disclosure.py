"""What the service tells a client it should not (issue 17, finding 7), each checked on the running app:

- a deeply nested JSON body (``{"pmcids": [[[[...``) is a 400, an oversized one a 413, never a 500;
- error bodies and job records carry no absolute server path and no host name or process id;
- with ``read_api_key`` set, ``/metrics``, ``/docs``, ``/redoc`` and ``/openapi.json`` need the key,
  ``/readyz`` shows only ``ready`` without it, and media are ``Cache-Control: private``;
- ``biomedsearch config`` (and a catalogue that cannot be opened) never print the database password;
- the data home is private to the service's user: its root ``0700``, what the CLI creates ``0600``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from reliability_fixtures import API_KEY, FakeEncoder, article_package, make_settings
from sqlalchemy import select

from app.config import Settings
from app.jobs import Worker
from app.main import create_app
from indexer.catalogue import Figure, Job, make_engine, make_session_factory

REPO = Path(__file__).resolve().parents[2]
H = {"X-API-Key": API_KEY}
READ_KEY = "read-key-for-tests"
R = {"X-API-Key": READ_KEY}


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, encoder_loader=lambda s, d: FakeEncoder()), raise_server_exceptions=False)


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home")


@pytest.fixture
def client(home: Settings) -> Iterator[TestClient]:
    with _client(home) as c:
        yield c


def _jobs(settings: Settings) -> int:
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_session_factory(engine)() as session:
            return len(session.scalars(select(Job)).all())
    finally:
        engine.dispose()


# --- JSON bodies ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [2_000, 30_000])
def test_a_deeply_nested_json_body_is_a_400_and_queues_nothing(client: TestClient, home: Settings, depth: int) -> None:
    body = '{"pmcids": ' + "[" * depth + "]" * depth + "}"
    assert len(body) < 64 * 1024
    resp = client.post("/api/articles", content=body, headers={**H, "content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "bad_request"
    assert "recursion" in resp.json()["error"]["message"]
    assert _jobs(home) == 0


def test_an_oversized_json_body_is_a_413(client: TestClient, home: Settings) -> None:
    body = '{"pmcids": [' + ",".join(['"PMC1"'] * 20_000) + "]}"
    resp = client.post("/api/articles", content=body, headers={**H, "content-type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert _jobs(home) == 0


# --- no server paths, hosts or process ids ----------------------------------------------------------------


def test_an_upload_that_fails_on_disk_names_no_server_path(
    client: TestClient, home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.api.routes import articles

    where = home.data_home.resolve() / "uploads" / "0a1b2c" / "PMC9.tar.gz"

    def disk_full(*_args: object, **_kwargs: object) -> Path:
        raise articles.UploadError(str(OSError(28, "No space left on device", str(where))))

    monkeypatch.setattr(articles, "save_upload", disk_full)
    resp = client.post("/api/articles", files={"file": ("PMC9.tar.gz", article_package(9, 1))}, headers=H)
    assert 400 <= resp.status_code < 500, resp.text
    message = resp.json()["error"]["message"]
    assert "No space left on device" in message and "PMC9.tar.gz" in message  # still says what went wrong
    assert str(home.data_home.resolve()) not in resp.text and "/uploads/" not in resp.text


def test_job_records_show_no_server_paths_and_no_host_or_pid(client: TestClient, home: Settings) -> None:
    import socket

    engine = make_engine(home.resolved_database_url)
    factory = make_session_factory(engine)
    host = socket.gethostname()
    secret_path = str(home.data_home.resolve() / "uploads" / "f00d" / "PMC7.tar.gz")
    with factory() as session:
        job = Job(
            kind="ingest", state="failed", payload={"paths": [secret_path]}, progress=0.2, counts={}, attempts=1,
            worker=f"{host}:4242:abcdef", stage="ingest",
            errors=[{"stage": "ingest", "source": "PMC7.tar.gz", "message": f"cannot read {secret_path}: truncated"}],
        )
        session.add(job)
        session.commit()
        job_id = job.id
    engine.dispose()
    for url in (f"/api/jobs/{job_id}", "/api/jobs"):
        resp = client.get(url)
        assert resp.status_code == 200, resp.text
        assert str(home.data_home.resolve()) not in resp.text and "/uploads/" not in resp.text
        assert f"{host}:4242" not in resp.text and "4242" not in resp.text
    one = client.get(f"/api/jobs/{job_id}").json()
    assert one["errors"][0]["message"] == "cannot read .../PMC7.tar.gz: truncated"
    assert one["worker"] is not None and one["worker"].startswith("w-")


def test_redaction_keeps_urls_and_api_routes() -> None:
    from app.redaction import redact_paths

    assert redact_paths("poll /api/jobs/4 later") == "poll /api/jobs/4 later"
    assert redact_paths("see https://pmc-oa-opendata.s3.amazonaws.com/PMC1.1/a.jpg") == (
        "see https://pmc-oa-opendata.s3.amazonaws.com/PMC1.1/a.jpg"
    )
    assert redact_paths("[Errno 2] No such file: '/srv/home/media/ab/cd.jpg'") == "[Errno 2] No such file: '.../cd.jpg'"
    assert redact_paths("in /tmp/x/") == "in ..."


# --- the read key covers every read -------------------------------------------------------------------------


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    settings = make_settings(tmp_path / "home", read_api_key=READ_KEY, run_worker=False)
    with _client(settings) as c:
        yield c, settings


@pytest.mark.parametrize("path", ["/metrics", "/docs", "/redoc", "/openapi.json", "/api/jobs"])
def test_with_a_read_key_metrics_and_docs_need_it(keyed: tuple[TestClient, Settings], path: str) -> None:
    client, _ = keyed
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get(path, headers=R).status_code == 200
    assert client.get(path, headers=H).status_code == 200  # the write key reads too


def test_with_a_read_key_readyz_shows_only_ready_without_it(keyed: tuple[TestClient, Settings]) -> None:
    client, _ = keyed
    anonymous = client.get("/readyz")
    assert anonymous.json() == {"ready": False} and anonymous.status_code == 503
    full = client.get("/readyz", headers=R).json()
    assert full["ready"] is False and full["reasons"] and "model_id" in full
    assert client.get("/healthz").status_code == 200


def test_without_a_read_key_docs_metrics_and_readiness_are_open(client: TestClient) -> None:
    for path in ("/metrics", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    assert "reasons" in client.get("/readyz").json()


@pytest.mark.parametrize("read_key", [None, READ_KEY])
def test_media_are_private_to_caches_when_reads_need_a_key(tmp_path: Path, read_key: str | None) -> None:
    settings = make_settings(tmp_path / "home", read_api_key=read_key)
    headers = {**H}
    with _client(settings) as client:
        resp = client.post("/api/articles", files={"file": ("PMC5.tar.gz", article_package(5, 1))}, headers=headers)
        assert resp.status_code == 202, resp.text
        engine = make_engine(settings.resolved_database_url)
        factory = make_session_factory(engine)
        Worker(settings, factory, lambda: FakeEncoder()).run_once()
        with factory() as session:
            fig_id = session.scalars(select(Figure.id)).first()
        engine.dispose()
        assert fig_id is not None
        for what in ("image", "thumbnail"):
            media = client.get(f"/api/figures/{fig_id}/{what}", headers=headers)
            assert media.status_code == 200
            cache = media.headers["cache-control"]
            if read_key is None:
                assert cache.startswith("public")
            else:
                assert cache.startswith("private") and "public" not in cache
                assert media.headers["vary"] == "X-API-Key"


# --- the CLI: no database password, a private data home -------------------------------------------------------


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("BIOMEDSEARCH_")}
    full.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=full, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_config_and_connection_errors_never_print_the_database_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://biomed:Sup3rSecret@127.0.0.1:1/nowhere"
    env = {"BIOMEDSEARCH_DATABASE_URL": url, "BIOMEDSEARCH_DATA_HOME": str(tmp_path / "home")}
    shown = _cli(["config"], env, tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "Sup3rSecret" not in shown.stdout + shown.stderr
    assert "postgresql+psycopg://biomed:***@127.0.0.1:1/nowhere" in shown.stdout
    failed = _cli(["db", "upgrade"], env, tmp_path)
    assert failed.returncode != 0
    assert "Sup3rSecret" not in failed.stdout + failed.stderr and "***" in failed.stdout + failed.stderr


def test_the_data_home_is_private(tmp_path: Path, shared_data: Path) -> None:
    home = tmp_path / "home"
    package = next((shared_data / "jats" / "packages").glob("*.tar.gz"))
    done = _cli(["ingest", str(package)], {"BIOMEDSEARCH_DATA_HOME": str(home)}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    created = [p for p in home.rglob("*")]
    assert any(p.name == "catalogue.db" for p in created) and any(p.suffix == ".jpg" for p in created)
    for path in created:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path.relative_to(home)} is {oct(mode)}"
    # The service makes an existing, world-readable data home private when it starts.
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    with _client(make_settings(loose)):
        pass
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
