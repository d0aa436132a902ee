"""Without FAISS the command says what to install, in one line, with no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the `biomedsearch` console script, run where importing `faiss` fails as if it were not installed
WITHOUT_FAISS = (
    "import sys; sys.modules['faiss'] = None; sys.argv[0] = 'biomedsearch'; from app.cli import main; main()"
)


def test_a_missing_faiss_is_one_line_naming_what_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BIOMEDSEARCH_DATA_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_FAISS, "check"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "pip install faiss-cpu==1.15.1" in done.stderr and "faiss-gpu==1.15.1" in done.stderr
