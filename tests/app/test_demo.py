"""`biomedsearch demo`'s preparation (corpus -> encoder -> indexes) on a real catalogue with a real
(randomly initialised) `biomedclip-tiny` export: what a first run builds and a second run reuses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from app_fixtures import make_settings
from typer.testing import CliRunner

from app.cli import cli
from app.demo import DemoError, find_corpus, prepare


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "biomedclip-tiny"
    home = tmp_path_factory.mktemp("export-home")
    done = CliRunner().invoke(
        cli, ["export", "--config", "biomedclip-tiny", "--out", str(out)], env={"BIOMEDSEARCH_DATA_HOME": str(home)}
    )
    assert done.exit_code == 0, done.output
    return out


def test_first_run_builds_everything_second_run_reuses_it(
    tmp_path: Path, shared_data: Path, tiny_export: Path
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("elife-19405", "pone.0056489"):
        shutil.copy(shared_data / "jats" / "packages" / f"{name}.tar.gz", corpus)
    settings = make_settings(tmp_path / "home", model=f"local-dir:{tiny_export}", text_model="minilm")

    first = prepare(settings, corpus, search_from=tmp_path, progress=False)
    text = "\n".join(first.steps)
    assert first.model_spec == f"local-dir:{tiny_export}" and first.encoder is not None
    assert "2 articles (2 added" in text and "(as configured)" in text
    assert "image: v1 exact" in text and "caption: v1 exact" in text
    assert "sentence:all-MiniLM-L6-v2" in text  # the hybrid caption channel is built too

    second = prepare(settings, corpus, search_from=tmp_path, progress=False)
    again = "\n".join(second.steps)
    assert "0 added, 0 replaced, 2 unchanged" in again
    assert "embedded 0 figures" in again and "(unchanged)" in again


def test_corpus_discovery(tmp_path: Path, shared_data: Path) -> None:
    # beside the checkout: the shared data's parts (packages, xml-only, MedPix splits)
    checkout = shared_data.parent.parent / "some-checkout"
    found = find_corpus(None, checkout)
    assert found is not None and found.train_jsonl is not None and found.val_jsonl is not None
    assert any(p.suffix == ".gz" for p in found.ingest) and any(p.suffix == ".nxml" for p in found.ingest)
    # nothing beside an unrelated folder; a named folder that does not exist is an error
    assert find_corpus(None, tmp_path / "nowhere" / "checkout") is None
    with pytest.raises(DemoError, match="does not exist"):
        find_corpus(tmp_path / "missing", tmp_path)
