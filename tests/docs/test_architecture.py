"""docs/ARCHITECTURE.md stays in step with the code: it names every module of the three packages."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "ARCHITECTURE.md"


def _modules() -> list[Path]:
    found = []
    for package in ("app", "indexer", "training"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO / package)
            if path.name == "__init__.py" or "migrations" in rel.parts or "__pycache__" in rel.parts:
                continue
            if rel.parts[0] in ("cli", "routes") or rel.parts[:2] == ("api", "routes"):
                continue  # named as folders: one *_cmds.py / router per resource
            found.append(path)
    return found


def test_every_module_is_on_the_map() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = []
    for path in _modules():
        rel = path.relative_to(REPO)
        short = "/".join(rel.parts[1:])  # as the package's table names it (`api/deps.py`, `jats.py`)
        if f"`{short}`" not in text:
            missing.append(str(rel))
    assert not missing, f"docs/ARCHITECTURE.md does not name: {', '.join(missing)}"


def test_every_module_on_the_map_exists() -> None:
    import re

    text = DOC.read_text(encoding="utf-8")
    for section, package in (("### training/", "training"), ("### indexer/", "indexer"), ("### app/", "app")):
        body = text.split(section, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        for name in re.findall(r"^\| `([\w/]+\.py)`", body, re.M):
            assert (REPO / package / name).is_file(), f"docs/ARCHITECTURE.md names {package}/{name}, which is gone"
