"""The one guard for a missing FAISS: the command exits with one line saying what to install.

FAISS is a core dependency (``faiss-cpu``), but a GPU host swaps it for ``faiss-gpu`` by hand and
can end up with neither; ``indexer`` imports ``faiss`` at module level, so the guard wraps both the
registration of the subcommands and their run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

FAISS_MISSING = (
    "FAISS is not installed. CPU: `pip install faiss-cpu==1.15.1`; GPU host: `pip install faiss-gpu==1.15.1` "
    "(never both: they are the same `faiss` module; see the README, Installing)."
)


@contextlib.contextmanager
def missing_faiss_exits() -> Iterator[None]:
    """Run the block; if it fails because the ``faiss`` module is missing, print :data:`FAISS_MISSING`
    to stderr and exit with status 2 (no traceback). Any other error propagates unchanged."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name != "faiss":
            raise
        print(f"error: {FAISS_MISSING}", file=sys.stderr)
        raise SystemExit(2) from None
