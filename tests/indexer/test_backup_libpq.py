"""The PostgreSQL client tools get the catalogue password through a private passfile, never argv
or the environment (``indexer`` reads no environment)."""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from indexer.backup import _libpq


def test_password_goes_to_a_private_passfile_removed_afterwards() -> None:
    url = "postgresql+psycopg://biomed:s3cr:et\\x@db.example:5433/catalogue?sslmode=require"
    with _libpq(url) as uri:
        assert "s3cr" not in uri
        parts = urlsplit(uri)
        assert parts.scheme == "postgresql" and parts.username == "biomed" and parts.port == 5433
        query = parse_qs(parts.query)
        assert query["sslmode"] == ["require"]
        passfile = Path(query["passfile"][0])
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        # libpq's format: host:port:db:user:password, with ':' and '\' escaped
        assert passfile.read_text(encoding="utf-8") == "*:*:*:*:s3cr\\:et\\\\x\n"
    assert not passfile.exists() and not passfile.parent.exists()


def test_no_password_no_passfile() -> None:
    with _libpq("postgresql+psycopg://postgres@127.0.0.1:5432/postgres") as uri:
        assert uri == "postgresql://postgres@127.0.0.1:5432/postgres"
