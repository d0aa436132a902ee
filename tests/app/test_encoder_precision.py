"""The encoder precision is a setting handed to every encoder the service loads, not process state."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest


def test_the_precision_setting_reaches_the_service_encoders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``BIOMEDSEARCH_ENCODER_PRECISION`` is passed to the CLIP loader and the caption-channel loader
    of each service; two services in one process keep their own (there is no process default)."""
    from fastapi.testclient import TestClient

    import training.encoders
    import training.sentence_encoder
    from app.config import Settings
    from app.main import create_app

    calls: list[tuple[str, str]] = []

    def fake_clip(spec: str, device: str = "auto", precision: str = "auto") -> SimpleNamespace:
        calls.append(("clip", precision))
        return SimpleNamespace(model_id="fake-clip", dim=8, device="cpu")

    def fake_text(spec: str, device: str = "auto", precision: str = "auto") -> SimpleNamespace:
        calls.append(("text", precision))
        return SimpleNamespace(model_id="fake-text", dim=8, device="cpu")

    monkeypatch.setattr(training.encoders, "load_encoder", fake_clip)
    monkeypatch.setattr(training.sentence_encoder, "load_sentence_encoder", fake_text)
    for choice in ("fp32", "auto", "fp32"):
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, data_home=tmp_path / choice, model="local-dir:/nowhere", device="cpu",
            encoder_precision=choice, run_worker=False,
        )
        app = create_app(settings)
        with TestClient(app):
            app.state.services.search.text_encoder()
        assert calls[-2:] == [("clip", choice), ("text", choice)]
    assert len(calls) == 6
