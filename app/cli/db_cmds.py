"""Subcommands: `biomedsearch db upgrade` (create or upgrade the catalogue schema)."""

from __future__ import annotations

import typer

from app.cli.base import console, fail, load_settings
from indexer.catalogue import migrate

db = typer.Typer(help="Catalogue database administration.", no_args_is_help=True)


@db.command("upgrade")
def upgrade() -> None:
    """Create the catalogue database, or bring it to the newest schema revision."""
    settings = load_settings()
    try:
        migrate(settings.resolved_database_url)
    except Exception as exc:  # the database is unreachable or refuses the migration
        fail(f"could not migrate {settings.shown_database_url}: {exc}")
    console.print(f"catalogue schema is current at {settings.shown_database_url}")
