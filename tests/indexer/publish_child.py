"""Child process for the kill -9 tests: runs update_indexes, announcing each step on stdout.

Usage: python publish_child.py DB_URL INDEX_DIR MODEL_ID EXACT_INDEX_MAX PAUSE_S REBUILD(0|1)

After printing each step name it sleeps PAUSE_S seconds, so the parent can SIGKILL it exactly
there (or at a random moment when PAUSE_S is 0).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from indexer.catalogue import make_engine, make_session_factory
from indexer.index_update import IndexOptions, update_indexes
from indexer.vector_index import AnnSpec


def main() -> None:
    """Run one update with a step hook that prints and pauses."""
    url, index_dir, model_id, exact_max, pause, rebuild = sys.argv[1:7]

    def hook(step: str) -> None:
        print(step, flush=True)
        time.sleep(float(pause))

    factory = make_session_factory(make_engine(url))
    options = IndexOptions(
        exact_index_max=int(exact_max), ann=AnnSpec(codec="SQ8"), tune_queries=100, rebuild=rebuild == "1"
    )
    update_indexes(factory, Path(index_dir), model_id, options=options, progress=False, on_step=hook)
    print("done", flush=True)


if __name__ == "__main__":
    main()
