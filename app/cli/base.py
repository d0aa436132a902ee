"""The root `biomedsearch` Typer application and what every subcommand shares."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from app.config import Settings

if TYPE_CHECKING:
    from indexer.catalogue import Database

cli = typer.Typer(
    name="biomedsearch",
    help="Semantic search over the figures of biomedical research articles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def load_settings(**overrides: object) -> Settings:
    """Build the Settings once for this command (environment + ``.env`` + explicit overrides).

    ``None`` overrides are ignored so that CLI options only replace what the user gave.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = Settings(**given)  # type: ignore[arg-type]
    settings.apply_torch_threads()
    return settings


def open_catalogue(settings: Settings, *, migrate: bool = True) -> Database:
    """The catalogue database of ``settings`` (brought to the newest schema unless ``migrate`` is
    False); exits with one clear line when it cannot be opened."""
    from indexer.catalogue import open_database
    from training.fsio import private_dir

    url = settings.resolved_database_url
    try:
        private_dir(settings.data_home)
    except OSError as exc:
        fail(f"cannot create the data home {settings.data_home}: {exc}")
    try:
        return open_database(url, migrate_schema=migrate)
    except Exception as exc:  # any driver / connection / migration failure: report it, no traceback
        fail(f"cannot open the catalogue at {settings.shown_database_url}: {exc}")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` as an error and exit with ``code`` (no traceback)."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def setup_logging(verbose: bool = False) -> None:
    """Log warnings (or everything with ``--verbose``) to stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
