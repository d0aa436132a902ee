"""Recipe knobs of ``training.train`` that need no training run: partial text-tower locking."""

from __future__ import annotations

import pytest
from torch import nn

from training.errors import ConfigError
from training.locking import lock_hf_text_tower
from training.model_factory import build_model, load_config


def _trainable(text: nn.Module) -> set[str]:
    return {n for n, p in text.named_parameters() if p.requires_grad}


def test_partial_lock_leaves_only_the_last_layers_and_the_projection_trainable() -> None:
    # open_clip's own HFTextEncoder.lock(unlocked_layers=2) raises KeyError('layer_attr') for BERT towers.
    model = build_model(load_config("biomedclip-tiny"), pretrained_text=False, pretrained_vision=False).model
    lock_hf_text_tower(model.text, 2)
    trainable = _trainable(model.text)
    assert trainable, "the last two layers and the projection must stay trainable"
    in_tower = {n for n in trainable if n.startswith("transformer.")}
    assert in_tower and all(n.startswith(("transformer.encoder.layer.4.", "transformer.encoder.layer.5."))
                            for n in in_tower)
    assert any(n.startswith("transformer.encoder.layer.4.") for n in in_tower)
    assert any(n.startswith("proj.") for n in trainable)

    lock_hf_text_tower(model.text, 0)  # fully locked: only the projection head
    assert all(n.startswith("proj.") for n in _trainable(model.text))

    with pytest.raises(ConfigError):
        lock_hf_text_tower(model.text, 7)  # MiniLM has 6 layers
