"""`biomedsearch index`: the re-index pipeline over what the catalogue holds (encode, publish once)."""

from __future__ import annotations

from pathlib import Path

from app_fixtures import HashEncoder
from sqlalchemy import func, select
from typer.testing import CliRunner

from app.cli import cli
from indexer.catalogue import Figure, open_database
from indexer.publish import LiveIndexes


def test_index_encodes_what_is_new_and_publishes_both_indexes(tmp_path: Path, shared_data: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # no stray .env
    home = tmp_path / "home"
    for name, value in {"DATA_HOME": str(home), "TEXT_MODEL": "", "DEVICE": "cpu", "USE_GPU": "false"}.items():
        monkeypatch.setenv(f"BIOMEDSEARCH_{name}", value)
    encoder = HashEncoder()
    monkeypatch.setattr("training.encoders.load_encoder", lambda spec, device="auto", precision="auto": encoder)
    runner = CliRunner()
    package = shared_data / "jats" / "packages" / "pone.0056489.tar.gz"
    assert runner.invoke(cli, ["ingest", "--no-progress", str(package)]).exit_code == 0

    first = runner.invoke(cli, ["index", "--model", "stub"])
    assert first.exit_code == 0, first.output
    with open_database(f"sqlite:///{home / 'catalogue.db'}", migrate_schema=False) as db, db.session_factory() as s:
        images = s.scalar(select(func.count()).select_from(Figure).where(Figure.image_path.is_not(None)))
        captions = s.scalar(select(func.count()).select_from(Figure).where(Figure.caption != ""))
    assert images and captions
    out = " ".join(first.output.split())
    assert f"({images} images, {captions} captions)" in out and "image: v1 exact" in out and "caption: v1 exact" in out
    live = LiveIndexes(home / "indexes", encoder.model_id, use_gpu=False)
    assert live.refresh() and (live.ntotal("image"), live.ntotal("caption")) == (images, captions)

    again = runner.invoke(cli, ["index", "--model", "stub", "--no-embed"])
    assert again.exit_code == 0, again.output
    assert "embedded" not in again.output and "(unchanged)" in again.output
