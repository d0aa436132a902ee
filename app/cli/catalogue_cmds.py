"""Subcommands that fill the figure catalogue: ``ingest`` and ``fetch`` (the PMC Cloud Service)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import typer

from app.cli.base import cli, console, fail, load_settings, open_catalogue
from app.config import Settings
from indexer.ingest import IngestReport, ingest_paths
from indexer.packages import PackageError
from indexer.pmc_client import HttpOptions, PmcError
from indexer.pmc_cloud import PmcCloud, parse_article_id
from indexer.pmc_fetch import fetch_ids, fetch_inventory
from indexer.withdrawal import republish_indexes


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


_FETCH_HELP = (
    "Download article versions from the PMC Cloud Service (the public S3 bucket pmc-oa-opendata, read "
    "anonymously over HTTPS) and ingest them.\n\n"
    "PMCID fetches the latest version, PMCID.VERSION (PMC3166277.2) that version. With --since DATE (and "
    "optionally --inventory NAME) it reads an S3 inventory of the bucket's metadata (the latest by default) "
    "and fetches every version changed since DATE; each object's key and ETag are recorded in the "
    "catalogue, so a daily `fetch --inventory latest` only fetches what changed, and a killed run resumes. "
    "Every file is checked against the md5 its metadata names; a mismatch refuses the whole version. "
    "Retracted articles are not added, and are withdrawn from the catalogue and the indexes when present.\n\n"
    "NCBI's OA web service (oa.fcgi) and its .tar.gz packages were retired in August 2026: `ingest` still "
    "takes packages you hold."
)


def _ingest_callback(settings: Settings, factory: Any, progress: bool, reports: list[IngestReport]) -> Any:
    """ingest(folders) -> the folders whose article was refused; keeps each report."""

    def ingest(folders: list[Path]) -> set[Path]:
        report = ingest_paths(folders, factory, settings.data_home, limits=settings.ingest_limits(), progress=progress)
        reports.append(report)
        failed = {Path(item.source).parent for item in report.failed}
        failed |= {Path(a.source).parent for a in report.articles if a.status == "failed"}
        return {f for f in folders if f.resolve() in {p.resolve() for p in failed}}

    return ingest


@cli.command("fetch", help=_FETCH_HELP)
def fetch_cmd(
    pmcids: list[str] = typer.Argument(None, help="PMCIDs such as PMC3166277, or PMC3166277.2 for one version."),
    since: str | None = typer.Option(None, "--since", help="Fetch every version whose metadata changed on or "
                                     "after DATE (YYYY-MM-DD), from the inventory."),
    inventory: str | None = typer.Option(None, "--inventory", help="Which inventory to read: 'latest' (the "
                                         "default with --since) or a date folder such as 2026-11-30."),
    licenses: list[str] = typer.Option(None, "--license", help="Only versions with this license_code "
                                       "(repeatable), e.g. --license 'CC BY' --license CC0 for commercial use."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Fetch at most this many versions "
                                     "in this run (the rest is left for the next run)."),
    dest: Path | None = typer.Option(None, help="Download folder (default <data_home>/downloads)."),
    ingest_them: bool = typer.Option(True, "--ingest/--no-ingest", help="Ingest what was downloaded (without "
                                     "it nothing is recorded as ingested, so a later run fetches it again)."),
    data_home: Path | None = typer.Option(None, help="Overrides BIOMEDSEARCH_DATA_HOME."),
    database_url: str | None = typer.Option(None, help="Overrides BIOMEDSEARCH_DATABASE_URL."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    settings = load_settings(data_home=data_home, database_url=database_url)
    since_date: dt.date | None = None
    if since is not None:
        try:
            since_date = dt.date.fromisoformat(since)
        except ValueError:
            fail(f"--since {since!r} is not a date (YYYY-MM-DD)")
    by_inventory = since_date is not None or inventory is not None
    if not pmcids and not by_inventory:
        fail("give one or more PMCIDs, or --since DATE / --inventory latest")
    if pmcids and by_inventory:
        fail("give PMCIDs or --since / --inventory, not both")
    if limit is not None and not by_inventory:
        fail("--limit applies to --since / --inventory runs")
    try:
        for raw in pmcids or []:
            parse_article_id(raw)
    except PmcError as exc:
        fail(str(exc))
    reports: list[IngestReport] = []
    options = HttpOptions(
        requests_per_second=settings.pmc_requests_per_second,
        retries=settings.pmc_retries,
        timeout_s=settings.pmc_timeout_s,
        max_download_bytes=settings.max_member_bytes,
    )
    chosen = list(licenses) if licenses else None
    folder = dest or settings.downloads_dir
    with open_catalogue(settings) as db:
        factory = db.session_factory
        ingest = _ingest_callback(settings, factory, progress, reports) if ingest_them else None
        try:
            with PmcCloud(base_url=settings.pmc_cloud_url, options=options) as cloud:
                if by_inventory:
                    report = fetch_inventory(cloud, factory, folder, since=since_date, which=inventory or "latest",
                                             licenses=chosen, limit=limit, ingest=ingest, progress=progress)
                else:
                    report = fetch_ids(cloud, pmcids, folder, session_factory=factory, licenses=chosen,
                                       ingest=ingest, progress=progress)
            for ident, message in report.errors:
                console.print(f"[bold red]not fetched[/] {ident}: {message}", soft_wrap=True)
            for label in report.retracted:
                console.print(f"[yellow]retracted[/] {label}: not added", soft_wrap=True)
            if report.withdrawn_articles:
                index_reports = republish_indexes(factory, settings.index_dir, settings.index_options(),
                                                  progress=progress)
                console.print(
                    f"withdrew {len(report.withdrawn_articles)} retracted article(s), "
                    f"{len(report.withdrawn_figures)} figure(s); republished the indexes of "
                    f"{len(index_reports)} model(s)",
                    soft_wrap=True,
                )
        except PmcError as exc:
            fail(str(exc))
    for ingest_report in reports:
        for item in ingest_report.failed:
            console.print(f"[bold red]refused[/] {item.source} {item.item}: {item.reason}: {item.detail}")
    if reports:
        typer.echo(_ingest_total(reports))
    typer.echo(report.summary())
    if report.errors:
        raise typer.Exit(1)


def _ingest_total(reports: list[IngestReport]) -> str:
    """One line over the batches: articles added / replaced / unchanged, figures, images."""
    total = IngestReport()
    for r in reports:
        total.articles += r.articles
        total.skipped += r.skipped
        total.failed += r.failed
        total.seconds += r.seconds
    return total.summary()
