"""The one `biomedsearch` command. Each module registers thin subcommands that build the
Settings and call ``training`` / ``indexer`` / ``app`` functions."""

from __future__ import annotations

from app.cli.faiss_guard import missing_faiss_exits

with missing_faiss_exits():
    from app.cli import (  # noqa: F401  (importing registers the subcommands)
        backup_cmds,
        catalogue_cmds,
        config_cmds,
        db_cmds,
        demo_cmds,
        index_cmds,
        search_cmds,
        service_cmds,
        training_cmds,
        types_cmds,
    )
    from app.cli.base import cli
    from app.cli.db_cmds import db

cli.add_typer(db, name="db")


def main() -> None:
    """Console-script entry point. Files the commands create are private to the user (umask 077):
    the catalogue, media, indexes and uploads of a data home are nobody else's to read."""
    import os

    from training.fsio import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)
    with missing_faiss_exits():
        cli()


__all__ = ["cli", "main"]
