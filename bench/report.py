"""Results: merge a run into the JSON file, print the tables (rich), refresh the README section.

The JSON (``bench/results/latest.json``, generated, not committed) holds one entry per stage with
the machine facts and load average of the run that produced it, so stages run at different times
keep their own context. The README section between ``<!-- bench:start -->`` and
``<!-- bench:end -->`` is regenerated from the whole file (a Markdown rendering of every table).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from training.fsio import write_atomic

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"

Tables = list[tuple[str, list[str], list[list[str]]]]


def merge_results(path: Path, stages: dict[str, Any]) -> dict[str, Any]:
    """Read ``path`` (if any), replace the entries of ``stages`` in it, write it back; return all."""
    doc: dict[str, Any] = {"stages": {}}
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = {"stages": {}}
    old_stages = doc.setdefault("stages", {})
    for name, new in stages.items():
        old = old_stages.get(name)
        old_result = old.get("result") if isinstance(old, dict) else None
        new_result = new.get("result") if isinstance(new, dict) else None
        if name == "search" and isinstance(old_result, dict) and isinstance(new_result, dict):
            # the search stage runs per size: a run at 1M keeps the rows measured at 100k
            sizes = {row.get("size") for row in new_result.get("rows", [])}
            kept = [row for row in old_result.get("rows", []) if row.get("size") not in sizes]
            merged = {**old_result, **new_result, "rows": kept + list(new_result.get("rows", []))}
            merged["per_size"] = {**old_result.get("per_size", {}), **new_result.get("per_size", {})}
            new = {**new, "result": merged}
        old_stages[name] = new
    write_atomic(path, json.dumps(doc, indent=1, default=str) + "\n")
    return doc


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: numbers rounded, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(ok: bool | None) -> str:
    """``met`` / ``MISSED`` / ``-`` for a target check."""
    return "-" if ok is None else ("met" if ok else "MISSED")


def print_tables(console: Console, title: str, tables: Tables) -> None:
    """Print each (caption, header, rows) as a rich table."""
    for caption, header, rows in tables:
        table = Table(title=f"{title}: {caption}", title_justify="left")
        for name in header:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def markdown(tables: Tables) -> str:
    """Tables as GitHub Markdown."""
    out = []
    for caption, header, rows in tables:
        out.append(f"**{caption}**\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        out.extend("| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows)
        out.append("")
    return "\n".join(out)


def refresh_readme(readme: Path, body: str) -> bool:
    """Replace the text between the bench markers in ``readme`` with ``body``; False if no markers."""
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    write_atomic(readme, f"{head}{START}\n{body.rstrip()}\n{END}{tail}")
    return True
