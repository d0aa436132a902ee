"""Run the real ``biomedsearch worker`` command with the fake encoder (a subprocess the tests kill).

Usage: ``python worker_child.py DELAY_S [worker options...]``: :mod:`cli_child` with ``worker``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_child import run

if __name__ == "__main__":
    run(float(sys.argv[1]), ["worker", *sys.argv[2:]])
