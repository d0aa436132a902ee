"""Helpers of the browser tests: a real data home (real ingest of shared-data packages, the real
tiny encoder, real FAISS indexes), a uvicorn server on a free 127.0.0.1 port in a thread, and
Debian's Chromium driven by Playwright."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from app.config import Settings
from app.main import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
API_KEY = "web-test-key-0123456789"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

# 15 figures with images (1 + 1 + 3 + 3 + 7) from five journals.
BASE_PACKAGES = (
    "elife-00353",
    "elife-19405",
    "pone.0056489",
    "2236-8906-hoehnea-49-e1112020",
    "1414-431X-bjmbr-37-04-459-477",
)


def web_settings(data_home: Path, model_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test service confined to ``data_home`` (no .env, in-process worker on)."""
    values: dict[str, Any] = {
        "data_home": data_home,
        "model": f"local-dir:{model_dir}",
        "api_key": API_KEY,
        "run_worker": True,
        "device": "cpu",
        "use_gpu": False,
        "index_poll_s": 0.2,
        "worker_poll_s": 0.1,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def build_home(home: Path, model_dir: Path, packages: list[Path]) -> None:
    """Ingest ``packages`` into ``home``, embed them with the model and publish the indexes."""
    from indexer.catalogue import make_engine, make_session_factory, migrate
    from indexer.embeddings import embed_pending
    from indexer.index_update import update_indexes
    from indexer.ingest import ingest_paths
    from training.encoders import load_encoder

    settings = web_settings(home, model_dir)
    url = settings.resolved_database_url
    home.mkdir(parents=True, exist_ok=True)
    migrate(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    try:
        report = ingest_paths(packages, factory, home, limits=settings.ingest_limits(), progress=False)
        assert len(report.article_ids) == len(packages), report.summary()
        encoder = load_encoder(f"local-dir:{model_dir}", device="cpu")
        embed_pending(factory, encoder, home, batch_size=16, progress=False)
        update_indexes(factory, settings.index_dir, encoder.model_id, options=settings.index_options(), progress=False)
    finally:
        engine.dispose()


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """Run the real app under uvicorn on a free 127.0.0.1 port; yield its base URL; stop it after."""
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="web-test-server", daemon=True)
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


def copy_home(template: Path, dest: Path) -> Path:
    """A private copy of a built data home."""
    shutil.copytree(template, dest)
    return dest
