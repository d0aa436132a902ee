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
    figure and publish the indexes too (asserts every package yields an article)."""
    from indexer.catalogue import make_engine, make_session_factory, migrate
    from indexer.embeddings import embed_pending
    from indexer.index_update import update_indexes
    from indexer.ingest import ingest_paths

    home = settings.data_home
    home.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    migrate(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    try:
        report = ingest_paths(list(packages), factory, home, limits=settings.ingest_limits(), progress=False)
        assert len(report.article_ids) == len(packages), report.summary()
        if encoder is not None:
            embed_pending(factory, encoder, home, batch_size=16, progress=False)
            update_indexes(
                factory, settings.index_dir, encoder.model_id, options=settings.index_options(), progress=False
            )
    finally:
        engine.dispose()


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
