"""Subcommand: ``biomedsearch config`` (the effective settings, or the reference table)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from app.cli.base import cli, load_settings


@cli.command("config")
def config_cmd(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the reference table of every setting (as in the README).")
    ] = False,
) -> None:
    """Print the effective settings as JSON (API keys and the database password masked), or with
    --markdown the reference table."""
    from app.config import config_table, masked_url

    if markdown:
        typer.echo(config_table(), nl=False)
        return
    settings = load_settings()
    values = json.loads(settings.model_dump_json())
    for secret in ("api_key", "read_api_key"):
        if values.get(secret):
            values[secret] = "**********"
    if values.get("database_url"):
        values["database_url"] = masked_url(values["database_url"])
    values["resolved_database_url"] = settings.shown_database_url
    values["default_model_spec"] = settings.default_model_spec()
    typer.echo(json.dumps(values, indent=2, sort_keys=True))
