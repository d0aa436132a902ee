"""Run a real ``biomedsearch`` command with the fake encoder (a subprocess the tests start and kill).

Usage: ``python cli_child.py DELAY_S COMMAND [options...]`` (``worker``, ``serve``, ...). Settings come
from the environment (``BIOMEDSEARCH_*``) exactly as for the installed command; only
``training.encoders.load_encoder`` is replaced by one returning
:class:`reliability_fixtures.FakeEncoder` (so no torch is imported and a start takes about a second).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_fixtures import FakeEncoder


def run(delay: float, argv: list[str]) -> None:
    """Install the stub encoder module, then hand ``argv`` (a command and its options) to the CLI."""
    stub = types.ModuleType("training.encoders")
    stub.load_encoder = lambda spec, device="auto", precision="auto": FakeEncoder(delay)  # type: ignore[attr-defined]
    sys.modules["training.encoders"] = stub
    from app.cli import main as cli_main

    sys.argv = ["biomedsearch", *argv]
    cli_main()


if __name__ == "__main__":
    run(float(sys.argv[1]), sys.argv[2:])
