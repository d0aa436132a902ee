"""Run the real ``biomedsearch worker`` command with the fake encoder (a subprocess the tests kill).

Usage: ``python worker_child.py DELAY_S [worker options...]``. Settings come from the environment
(``BIOMEDSEARCH_*``) exactly as for the installed command; only ``training.encoders.load_encoder``
is replaced by one returning :class:`reliability_fixtures.FakeEncoder` (so no torch is imported and
a restart takes about a second).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_fixtures import FakeEncoder


def main() -> None:
    """Install the stub encoder module, then hand over to the CLI's ``worker`` command."""
    delay = float(sys.argv[1])
    stub = types.ModuleType("training.encoders")
    stub.load_encoder = lambda spec, device="auto", precision="auto": FakeEncoder(delay)  # type: ignore[attr-defined]
    sys.modules["training.encoders"] = stub
    from app.cli import main as cli_main

    sys.argv = ["biomedsearch", "worker", *sys.argv[2:]]
    cli_main()


if __name__ == "__main__":
    main()
