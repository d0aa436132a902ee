"""Helpers of the browser tests: a real data home (real ingest of shared-data packages, the real
tiny encoder, real FAISS indexes), a uvicorn server on a free 127.0.0.1 port in a thread, and
Debian's Chromium driven by Playwright."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service_fixtures import build_home, running_server

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
        "text_model": None,  # the CLIP caption index (tests of the sentence encoder set it)
        "device": "cpu",
        "use_gpu": False,
        "index_poll_s": 0.2,
        "worker_poll_s": 0.1,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def build_web_home(home: Path, model_dir: Path, packages: list[Path]) -> None:
    """Ingest ``packages`` into ``home``, embed them with the real model and publish the indexes."""
    from training.encoders import load_encoder

    build_home(web_settings(home, model_dir), packages, load_encoder(f"local-dir:{model_dir}", device="cpu"))


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """Run the real app under uvicorn on a free 127.0.0.1 port; yield its base URL; stop it after."""
    with running_server(create_app(settings)) as url:
        yield url


def copy_home(template: Path, dest: Path) -> Path:
    """A private copy of a built data home."""
    shutil.copytree(template, dest)
    return dest
