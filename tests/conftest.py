"""Fixtures shared by the whole suite: shared data, throwaway databases on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Session fixtures shared by several test folders (one tiny encoder trained once per run).
pytest_plugins = ["model_fixtures"]

REPO = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get(
    "BIOMEDSEARCH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the end-to-end tier: tests that need the trained tiny encoder, a browser, or kill
    subprocesses. ``make test`` runs everything; ``make test-fast`` deselects them (``-m "not e2e"``)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if "tiny_model_dir" in names or item.get_closest_marker("browser") or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)


def _shared_data_dir() -> Path | None:
    env = os.environ.get("BIOMEDSEARCH_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for path in candidates:
        if (path / "jats").is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (or ``$BIOMEDSEARCH_SHARED_DATA``)."""
    path = _shared_data_dir()
    if path is None:
        pytest.skip("shared data (../shared/data) is not beside this checkout")
    return path


def _create_postgres_db() -> tuple[str, str]:
    """Create an empty PostgreSQL database; return (its URL, its name)."""
    import sqlalchemy as sa

    name = f"bms_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", name


def _drop_postgres_db(name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """A new, empty (unmigrated) PostgreSQL database for this test, dropped after it."""
    if os.environ.get("BIOMEDSEARCH_TEST_SKIP_POSTGRES") == "1":
        pytest.skip("PostgreSQL tests switched off by BIOMEDSEARCH_TEST_SKIP_POSTGRES=1")
    url, name = _create_postgres_db()
    try:
        yield url
    finally:
        _drop_postgres_db(name)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per run; tests get copies (migrating each time is slow)."""
    from indexer.catalogue import migrate

    path = tmp_path_factory.mktemp("sqlite-template") / "catalogue.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _postgres_db() -> Iterator[str]:
    """One throwaway, migrated PostgreSQL database for this run, dropped at the end."""
    from indexer.catalogue import migrate

    if os.environ.get("BIOMEDSEARCH_TEST_SKIP_POSTGRES") == "1":
        pytest.skip("PostgreSQL tests switched off by BIOMEDSEARCH_TEST_SKIP_POSTGRES=1")
    url, name = _create_postgres_db()
    try:
        migrate(url)
        yield url
    finally:
        _drop_postgres_db(name)


def _truncate_postgres(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        names = [
            t for t in sa.inspect(conn).get_table_names() if t != "alembic_version"
        ]
        if names:
            conn.execute(sa.text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
    engine.dispose()


def _sqlite_copy(template: Path, tmp_path: Path) -> str:
    target = tmp_path / "catalogue.db"
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated catalogue database: a SQLite file, then the run's PostgreSQL database.

    The PostgreSQL database is created for this run and dropped at its end; every test starts with
    its tables emptied. Set ``BIOMEDSEARCH_TEST_SKIP_POSTGRES=1`` to skip that half on a machine
    without PostgreSQL.
    """
    if request.param == "sqlite":
        return _sqlite_copy(request.getfixturevalue("_sqlite_template"), tmp_path)
    url: str = request.getfixturevalue("_postgres_db")
    _truncate_postgres(url)
    return url


@pytest.fixture
def sqlite_url(_sqlite_template: Path, tmp_path: Path) -> str:
    """A migrated, empty SQLite catalogue (for tests whose subject is not the database)."""
    return _sqlite_copy(_sqlite_template, tmp_path)
