"""Subcommands: ``biomedsearch backup DIR`` and ``biomedsearch restore DIR`` (see :mod:`indexer.backup`).

The catalogue is the one in the settings (``BIOMEDSEARCH_DATABASE_URL`` or the SQLite file in the
data home): SQLite is copied with its online backup API (safe while the service runs), PostgreSQL
with ``pg_dump`` / ``pg_restore`` (the PostgreSQL client tools must be on PATH). Stop the service
and workers before a restore. A restore accepts only what a backup of this project writes (see
:mod:`indexer.backup_policy`) and runs ``pg_restore`` only as a role that is not a superuser,
unless ``--allow-superuser``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.base import cli, console, fail, load_settings, setup_logging


@cli.command("backup")
def backup_cmd(
    dest: Annotated[Path, typer.Argument(help="New folder to write the backup to (outside the data home).")],
    data_home: Annotated[Path | None, typer.Option(help="Data home (default: Settings.data_home).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Back up the catalogue (with its stored embeddings), the index versions and the media."""
    from indexer.backup import BackupError, create_backup

    setup_logging()
    settings = load_settings(data_home=data_home)
    try:
        report = create_backup(settings.data_home, settings.resolved_database_url, dest, progress=progress)
    except (BackupError, OSError) as exc:
        fail(f"backup failed: {exc}")
    for line in report.warnings():
        console.print(f"warning: {line}")
    console.print(report.summary())


@cli.command("restore")
def restore_cmd(
    src: Annotated[Path, typer.Argument(help="A folder written by `biomedsearch backup`.")],
    data_home: Annotated[Path | None, typer.Option(help="Data home (default: Settings.data_home).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a data home / catalogue that holds data.")] = False,
    allow_superuser: Annotated[
        bool,
        typer.Option(
            "--allow-superuser",
            help="Let pg_restore run as a PostgreSQL superuser (only for a backup you made yourself).",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Restore a backup into the data home and the configured catalogue.

    The backup is checked first (only what a BiomedSearch backup writes: no dotfiles, database
    sidecars, links, pickled or remote-code models, foreign SQL; every checksum); queued jobs that
    name files outside uploads/ and downloads/ are marked failed.
    """
    from indexer.backup import BackupError, restore_backup

    setup_logging()
    settings = load_settings(data_home=data_home)
    try:
        report = restore_backup(
            src,
            settings.data_home,
            settings.resolved_database_url,
            force=force,
            allow_superuser=allow_superuser,
            progress=progress,
        )
    except (BackupError, OSError) as exc:
        fail(f"restore failed: {exc}")
    for line in report.warnings():
        console.print(f"warning: {line}")
    console.print(report.summary("restored"))
