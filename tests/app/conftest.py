"""Fixtures of the API tests: a real catalogue + real indexes built once per session with the
real tiny encoder, copied into each test that needs a service over it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from app_fixtures import build_home, make_settings

BASE_PACKAGES = ("elife-00353", "elife-19405", "pone.0056489", "2236-8906-hoehnea-49-e1112020")


@pytest.fixture(scope="session")
def built_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, shared_data: Path) -> Path:
    """A data home with 4 real articles ingested, embedded and indexed (SQLite): a template to copy."""
    from training.encoders import load_encoder

    home = tmp_path_factory.mktemp("built") / "home"
    settings = make_settings(home, model=f"local-dir:{tiny_model_dir}")
    packages = [shared_data / "jats" / "packages" / f"{name}.tar.gz" for name in BASE_PACKAGES]
    build_home(settings, packages, load_encoder(settings.default_model_spec() or "", device="cpu"))
    return home


@pytest.fixture
def service_home(built_home: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`built_home` (tests may add articles to it)."""
    dest = tmp_path / "home"
    shutil.copytree(built_home, dest)
    return dest
