"""The package layering of DESIGN.md, enforced: app -> indexer -> training, never back, and the
libraries (``indexer``, ``training``) never read settings or the environment.

Two checks: import-linter's contracts (``[tool.importlinter]`` in pyproject.toml, the same run as
``make lint``) for the imports, and an AST scan of the libraries for the environment reads that are
not imports (``os.environ``, ``os.getenv`` and their kin).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("indexer", "training")
# os attributes that read (or write) the process environment
ENV_ATTRS = frozenset({"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"})


def environment_reads(source: str, filename: str = "<source>") -> list[str]:
    """Every place in ``source`` that touches the process environment, as ``file:line: what``.

    Catches ``os.environ`` / ``os.getenv(...)`` (also through ``import os as x``), ``from os import
    environ`` and ``from os import getenv``.
    """
    tree = ast.parse(source, filename)
    os_names = {"os"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names |= {alias.asname or alias.name for alias in node.names if alias.name == "os"}
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [f"{filename}:{node.lineno}: from os import {a.name}" for a in node.names if a.name in ENV_ATTRS]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in ENV_ATTRS
            and isinstance(node.value, ast.Name)
            and node.value.id in os_names
        ):
            found.append(f"{filename}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_the_scan_finds_every_spelling_of_an_environment_read() -> None:
    source = (
        "import os\nimport os as system\nfrom os import getenv, path\n"
        "a = os.environ['X']\nb = system.getenv('Y')\nc = getenv('Z')\nd = os.path.join('a', 'b')\n"
    )
    assert sorted(environment_reads(source, "m.py")) == [
        "m.py:3: from os import getenv", "m.py:4: os.environ", "m.py:5: system.getenv",
    ]
    assert environment_reads("import os\nos.path.join('a')\nos.replace('a', 'b')\n") == []


def test_indexer_and_training_never_read_the_environment() -> None:
    found: list[str] = []
    for package in LIBRARIES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += environment_reads(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert found == [], "read settings at the entry points (app) and pass them down:\n" + "\n".join(found)


def test_the_import_contracts_hold() -> None:
    """import-linter: training imports neither indexer nor app, indexer does not import app, and
    neither library imports a settings reader (pydantic-settings, python-dotenv, app.config)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
         "sys.exit(lint_imports_command())"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout
