"""The README stays true: its configuration table is the one the code generates, and the commands
it names exist."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings, config_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_config_table_matches_settings() -> None:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- config:start -->\n(.*?)<!-- config:end -->", text, re.S)
    assert found, "README lacks the configuration table markers"
    assert found.group(1) == config_table(), "regenerate with `biomedsearch config --markdown`"
    for name in Settings.model_fields:
        assert f"`BIOMEDSEARCH_{name.upper()}`" in found.group(1)


def test_every_cli_command_in_the_readme_exists() -> None:
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"`biomedsearch ([a-z][a-z-]+)", text))
    assert named, "the README names no commands"
    runner = CliRunner()
    for command in sorted(named):
        result = runner.invoke(cli, [command, "--help"])
        assert result.exit_code == 0, f"`biomedsearch {command}` from the README: {result.output}"


def test_config_command_masks_secrets(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BIOMEDSEARCH_API_KEY", "very-secret-key")
    result = CliRunner().invoke(cli, ["config"])
    assert result.exit_code == 0, result.output
    assert "very-secret-key" not in result.output and '"api_key": "**********"' in result.output

