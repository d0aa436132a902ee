"""Subcommands that fill the figure catalogue: ``ingest`` and ``fetch``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer

from app.cli.base import cli, console, fail, load_settings, open_catalogue
from app.config import Settings
from indexer.ingest import IngestReport, ingest_paths
from indexer.packages import PackageError
from indexer.pmc_client import PmcError, fetch_packages


def _run_ingest(settings: Settings, paths: list[Path], progress: bool, verbose: bool) -> IngestReport:
    try:
        with open_catalogue(settings) as db:
            report = ingest_paths(
                paths,
                db.session_factory,
                settings.data_home,
                limits=settings.ingest_limits(),
                progress=progress,
            )
    except PackageError as exc:
        fail(str(exc))
    shown = report.skipped if verbose else report.skipped[:20]
    for item in shown:
        console.print(f"[yellow]skipped[/] {item.source} {item.item}: {item.detail or item.reason}")
    if len(shown) < len(report.skipped):
        console.print(f"... and {len(report.skipped) - len(shown)} more skipped (--verbose lists all)")
    for item in report.failed:
        console.print(f"[bold red]refused[/] {item.source} {item.item}: {item.reason}: {item.detail}")
    typer.echo(report.summary())
    return report


@cli.command("ingest")
def ingest_cmd(
    paths: list[Path] = typer.Argument(..., help="PMC .tar.gz packages, article folders, .nxml files, "
                                       "JSONL manifests or directories holding them."),
    data_home: Path | None = typer.Option(None, help="Overrides BIOMEDSEARCH_DATA_HOME."),
    database_url: str | None = typer.Option(None, help="Overrides BIOMEDSEARCH_DATABASE_URL."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List every skipped item."),
) -> None:
    """Add articles and their figures to the catalogue (idempotent; newer versions replace older)."""
    settings = load_settings(data_home=data_home, database_url=database_url)
    report = _run_ingest(settings, paths, progress, verbose)
    if report.failed:
        raise typer.Exit(1)


@cli.command("fetch")
def fetch_cmd(
    pmcids: list[str] = typer.Argument(None, help="PMCIDs such as PMC3166277."),
    since: str | None = typer.Option(None, "--since", help="Fetch every package updated since DATE "
                                     "(YYYY-MM-DD)."),
    dest: Path | None = typer.Option(None, help="Download folder (default <data_home>/downloads)."),
    ingest: bool = typer.Option(True, "--ingest/--no-ingest", help="Ingest what was downloaded."),
    data_home: Path | None = typer.Option(None, help="Overrides BIOMEDSEARCH_DATA_HOME."),
    database_url: str | None = typer.Option(None, help="Overrides BIOMEDSEARCH_DATABASE_URL."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Download PMC OA packages from NCBI's OA web service (resumable, rate limited) and ingest them."""
    settings = load_settings(data_home=data_home, database_url=database_url)
    since_date: dt.date | None = None
    if since is not None:
        try:
            since_date = dt.date.fromisoformat(since)
        except ValueError:
            fail(f"--since {since!r} is not a date (YYYY-MM-DD)")
    if not pmcids and since_date is None:
        fail("give one or more PMCIDs or --since DATE")
    errors: list[tuple[str, str]] = []
    try:
        paths = fetch_packages(
            pmcids or [],
            since=since_date,
            dest_dir=dest or settings.downloads_dir,
            base_url=settings.pmc_oa_url,
            requests_per_second=settings.pmc_requests_per_second,
            retries=settings.pmc_retries,
            timeout_s=settings.pmc_timeout_s,
            max_download_bytes=settings.max_archive_bytes,
            on_error=lambda pmcid, message: errors.append((pmcid, message)),
            progress=progress,
        )
    except PmcError as exc:
        fail(str(exc))
    for pmcid, message in errors:
        console.print(f"[bold red]not fetched[/] {pmcid}: {message}")
    typer.echo(f"fetch: {len(paths)} package(s) downloaded, {len(errors)} failed")
    failed = bool(errors)
    if ingest and paths:
        report = _run_ingest(settings, paths, progress, verbose=False)
        failed = failed or bool(report.failed)
    if failed:
        raise typer.Exit(1)
