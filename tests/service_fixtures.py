"""What the API, web and reliability tests share: a data home built the real way (ingest ->
embed -> publish) and a uvicorn server on a free 127.0.0.1 port that stops when the test ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.config import Settings


def build_home(settings: Settings, packages: Sequence[Path], encoder: Any | None) -> None:
    """Ingest ``packages`` into the catalogue of ``settings``; with an ``encoder``, embed every
    figure and publish the indexes too (asserts every package yields an article). The re-index
    pipeline builds it, as ``biomedsearch index`` does (one publication, no caption channel)."""
    from app.reindex import catalogue, reindex_options
    from indexer.catalogue import open_database
    from indexer.pipeline import Encoders, reindex
    from indexer.vocabulary import Stage

    settings.data_home.mkdir(parents=True, exist_ok=True)
    skip = frozenset() if encoder is not None else frozenset(Stage) - {Stage.INGEST}
    options = reindex_options(settings, batch_size=16, publish_images_first=False, skip=skip, progress=False)
    with open_database(settings.resolved_database_url) as db:
        report = reindex(list(packages), catalogue(settings, db.session_factory), Encoders(lambda: encoder), options)
    assert report.ingest is not None and len(report.ingest.article_ids) == len(packages), report.summaries()


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yield its base URL; stop it after."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
