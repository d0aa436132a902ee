"""``docker-compose.yml`` is a deployment, not a demo (issue 17, finding 8).

Checked on the file itself (parsed with PyYAML): loopback-only ports unless the user opts in, no
default database password, an application role that is not the superuser, memory and process
limits, read-only root file systems, no capabilities, no-new-privileges, and a TLS + rate-limit
proxy as a profile. Where a compose client is installed (``docker compose`` or ``docker-compose``;
no engine needed) ``config`` must accept the file with the passwords set and refuse it without
them. The role-creating init script is run against the test PostgreSQL server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
INIT_SCRIPT = REPO / "deploy" / "postgres-init" / "10-application-role.sh"
NGINX = REPO / "deploy" / "nginx.conf"
PASSWORDS = {"POSTGRES_PASSWORD": "pw-super-0123", "BIOMEDSEARCH_DB_PASSWORD": "pw-app-4567"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file, anchors and merge keys resolved."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert {"db", "migrate", "api", "worker", "proxy"} <= set(services)
    return services


def test_published_ports_bind_loopback_unless_the_user_opts_in(compose: dict[str, Any]) -> None:
    published = {name: svc.get("ports", []) for name, svc in _services(compose).items() if svc.get("ports")}
    assert set(published) == {"api", "proxy"}, "only the API and the proxy publish ports"
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str), f"{name}: use the short syntax with an explicit host address"
            assert re.fullmatch(r"\$\{BIOMEDSEARCH_(PROXY_)?BIND:-127\.0\.0\.1\}:.+:\d+", port), (name, port)
    assert "expose" not in _services(compose)["db"] and "ports" not in _services(compose)["db"]


def test_no_default_database_password(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    assert not re.search(r"PASSWORD[A-Z_]*:-", text), "a password must never have a default"
    db_env = _services(compose)["db"]["environment"]
    assert db_env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert db_env["BIOMEDSEARCH_DB_PASSWORD"].startswith("${BIOMEDSEARCH_DB_PASSWORD:?")
    for name in ("migrate", "api", "worker"):
        url = _services(compose)[name]["environment"]["BIOMEDSEARCH_DATABASE_URL"]
        assert ":${BIOMEDSEARCH_DB_PASSWORD:?" in url, name
        assert "POSTGRES_PASSWORD" not in url, f"{name} must not see the superuser password"
        assert "POSTGRES_PASSWORD" not in str(_services(compose)[name]["environment"])


def test_the_application_role_is_not_the_superuser(compose: dict[str, Any]) -> None:
    services = _services(compose)
    superuser = services["db"]["environment"]["POSTGRES_USER"]
    for name in ("migrate", "api", "worker"):
        url = services[name]["environment"]["BIOMEDSEARCH_DATABASE_URL"]
        user = re.match(r"postgresql\+psycopg://([^:@]+)[:@]", url)
        assert user is not None and user.group(1) not in (superuser, "postgres"), url
    mounts = services["db"]["volumes"]
    assert "./deploy/postgres-init:/docker-entrypoint-initdb.d:ro" in mounts
    script = INIT_SCRIPT.read_text()
    assert "NOSUPERUSER" in script and "NOCREATEROLE" in script and "NOCREATEDB" in script
    assert os.access(INIT_SCRIPT, os.X_OK)


def test_every_container_is_confined(compose: dict[str, Any]) -> None:
    for name, svc in _services(compose).items():
        assert svc.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        assert svc.get("read_only") is True, name
        assert any(str(t).startswith("/tmp") for t in svc.get("tmpfs", [])), f"{name}: /tmp as tmpfs"
        assert svc.get("mem_limit"), f"{name}: memory limit"
        assert int(svc.get("pids_limit", 0)) > 0, f"{name}: process limit"
        assert "privileged" not in svc and svc.get("network_mode") != "host", name
        if name != "db":
            assert not svc.get("cap_add"), f"{name} needs no capability"
    assert set(_services(compose)["db"]["cap_add"]) <= {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}


def test_reverse_proxy_profile_terminates_tls_and_rate_limits(compose: dict[str, Any]) -> None:
    proxy = _services(compose)["proxy"]
    assert proxy["profiles"] == ["proxy"], "the proxy is opt-in"
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    conf = NGINX.read_text()
    for needle in ("ssl_certificate ", "ssl_certificate_key ", "limit_req_zone", "limit_req zone=image",
                   "limit_req zone=write", "client_max_body_size", "proxy_pass http://biomedsearch_api",
                   "server api:8000"):  # fmt: skip
        assert needle in conf, needle
    assert re.search(r"listen 8443 ssl", conf) and ":8443" in proxy["ports"][0]


def test_dockerfile_runs_unprivileged() -> None:
    text = (REPO / "Dockerfile").read_text()
    runtime = text.split("AS runtime", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert "chmod a-s" in runtime, "setuid / setgid bits are stripped"


# --- the compose client's own check (skipped where no client is installed) -----------------------


def _compose_cmd() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _config(extra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("no compose client (docker compose / docker-compose) installed")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **extra_env}
    return subprocess.run(
        [*cmd, "--project-directory", str(REPO), "-f", str(COMPOSE), *args, "config"],
        env=env, capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip


def test_compose_config_refuses_to_start_without_passwords() -> None:
    for missing in PASSWORDS:
        env = {k: v for k, v in PASSWORDS.items() if k != missing}
        done = _config(env)
        assert done.returncode != 0
        assert f"set {missing}" in done.stderr + done.stdout, done.stderr


def test_compose_config_accepts_the_file_and_binds_loopback() -> None:
    done = _config(PASSWORDS, "--profile", "proxy")
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    for name in ("api", "proxy"):
        ports = str(resolved[name]["ports"])
        assert "127.0.0.1" in ports and "0.0.0.0" not in ports, ports
    assert "pw-super-0123" not in str(resolved["api"]) and "pw-app-4567" in str(resolved["api"])
    opened = _config({**PASSWORDS, "BIOMEDSEARCH_BIND": "0.0.0.0"})
    assert opened.returncode == 0 and "0.0.0.0" in str(yaml.safe_load(opened.stdout)["services"]["api"]["ports"])


# --- the init script, run against a real PostgreSQL ----------------------------------------------


@pytest.fixture
def fresh_database(empty_postgres_url: str) -> Iterator[tuple[sa.Engine, str]]:
    """A new database on the test PostgreSQL server (an admin engine on it, its name); dropped
    afterwards together with the role the init script creates."""
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    url = sa.engine.make_url(empty_postgres_url)
    name = str(url.database)
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        yield admin, name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}_app"'))
            conn.execute(sa.text("GRANT CONNECT ON DATABASE postgres TO PUBLIC"))  # the script revoked it
        admin.dispose()


def test_init_script_creates_a_limited_role_that_can_migrate(fresh_database: tuple[sa.Engine, str]) -> None:
    from indexer.catalogue import migrate

    admin, name = fresh_database
    role = f"{name}_app"
    url = sa.engine.make_url(str(admin.url))
    env = {
        **os.environ,
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_DB": name,
        "BIOMEDSEARCH_DB_USER": role,
        "BIOMEDSEARCH_DB_PASSWORD": "it's; a \"quoted' password",  # quoted by psql, not spliced
    }
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    done = subprocess.run(["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with admin.connect() as conn:
        attrs = conn.execute(
            sa.text("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
                    "FROM pg_roles WHERE rolname = :r"), {"r": role}
        ).one()  # fmt: skip
        owner = conn.execute(
            sa.text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :d"), {"d": name}
        ).scalar_one()
    assert tuple(attrs) == (False, False, False, False, False)
    assert owner == role
    app_url = url.set(username=role, password=None, database=name).render_as_string(hide_password=False)
    migrate(app_url)  # the application role can create its schema (tables, functions, triggers)
    app = sa.create_engine(app_url, isolation_level="AUTOCOMMIT")
    try:
        with app.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM figures")).scalar_one() == 0
            su = conn.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar()
            assert su is False
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.execute(sa.text(f'CREATE DATABASE "{name}_x"'))
            with pytest.raises(sa.exc.ProgrammingError, match="must be superuser"):
                conn.execute(sa.text("COPY (SELECT 1) TO PROGRAM 'true'"))
    finally:
        app.dispose()
