"""Locking towers (LiT) and the optimizer's parameter groups.

open_clip's lock options, made to work for the towers this project builds: a Hugging Face text
tower fully locked or with its last N layers trainable (open_clip's ``HFTextEncoder.lock`` raises
for N > 0 on BERT towers), and a timm image trunk fully locked or with its last N layer groups
trainable (open_clip's ``TimmModel.lock``). A locked trunk's BatchNorm statistics are frozen by
keeping the trunk in eval mode (:func:`set_train_mode`) rather than by swapping in
``FrozenBatchNorm2d``, which would change the state dict's keys and break the export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from training.errors import ConfigError


@dataclass(frozen=True)
class Locks:
    """What a run keeps fixed: ``*_frozen`` towers never change, so their outputs can be cached."""

    text_locked: bool
    text_frozen: bool  # fully locked HF text tower (projection still trains)
    image_locked: bool
    image_frozen: bool  # fully locked image trunk (head still trains)
    is_hf_text: bool


def lock_hf_text_tower(text: nn.Module, unlocked_layers: int) -> None:
    """Freeze a Hugging Face text tower (LayerNorms included) except its last ``unlocked_layers`` layers.

    open_clip's ``HFTextEncoder.lock`` does this for ``unlocked_layers == 0`` only: for N > 0 it
    looks up a ``layer_attr`` that its ``arch_dict`` lacks for BERT (MiniLM, PubMedBERT) and raises
    ``KeyError``. Same semantics: embeddings + layers, all but the last N frozen; the projection
    head (``text.proj``) stays trainable.
    """
    transformer = text.transformer
    for p in transformer.parameters():
        p.requires_grad = False
    if unlocked_layers <= 0:
        return
    encoder = transformer.encoder if hasattr(transformer, "encoder") else transformer
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise ConfigError("partial text locking needs a BERT-style tower (encoder.layer)")
    if unlocked_layers > len(layers):
        raise ConfigError(f"lock_text_unlocked_layers {unlocked_layers} > the tower's {len(layers)} layers")
    for layer in list(layers)[-unlocked_layers:]:
        for p in layer.parameters():
            p.requires_grad = True


def lock_image_trunk(visual: nn.Module, unlocked_groups: int) -> None:
    """Freeze a timm image trunk except its last ``unlocked_groups`` layer groups (open_clip's
    ``TimmModel.lock`` without BatchNorm swapping); the head stays trainable.

    Raises :class:`ConfigError` for a tower that is not a timm trunk or too many groups.
    """
    trunk = getattr(visual, "trunk", None)
    if not isinstance(trunk, nn.Module) or not hasattr(visual, "lock"):
        raise ConfigError("lock_image needs a timm image tower (vision_cfg.timm_model_name)")
    if unlocked_groups > 0:
        from timm.models import group_parameters

        groups = len(group_parameters(trunk, trunk.group_matcher()))
        if unlocked_groups >= groups:
            raise ConfigError(f"lock_image_unlocked_groups {unlocked_groups} >= the trunk's {groups} layer groups")
    visual.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=False)


def apply_locks(model: nn.Module, recipe: dict[str, Any]) -> Locks:
    """Lock the towers the resolved ``recipe`` asks for; return what is locked and what is frozen."""
    text = getattr(model, "text", None)
    is_hf_text = hasattr(text, "pooler") and hasattr(text, "transformer")
    text_locked, image_locked = bool(recipe["lock_text"]), bool(recipe["lock_image"])
    if text_locked:
        if not is_hf_text:
            raise ConfigError("lock_text needs a Hugging Face text tower (hf_model_name)")
        assert text is not None
        lock_hf_text_tower(text, int(recipe["lock_text_unlocked_layers"]))
    if image_locked:
        lock_image_trunk(model.visual, int(recipe["lock_image_unlocked_groups"]))
    return Locks(text_locked=text_locked, text_frozen=text_locked and int(recipe["lock_text_unlocked_layers"]) == 0,
                 image_locked=image_locked,
                 image_frozen=image_locked and int(recipe["lock_image_unlocked_groups"]) == 0, is_hf_text=is_hf_text)


def set_train_mode(model: nn.Module, locks: Locks) -> None:
    """``model.train()``, with locked towers in eval mode (frozen BatchNorm statistics, no dropout)."""
    model.train()
    if locks.text_frozen:
        model.text.eval()
    if locks.image_locked:
        model.visual.trunk.eval()


def param_groups(model: nn.Module, lr: float, wd: float, text_lr: float, image_lr: float) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters: no weight decay on norms / biases / the logit scale;
    ``text_lr`` for the text transformer, ``image_lr`` for the image trunk, ``lr`` for heads and the rest."""
    groups: dict[tuple[bool, str], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        tower = ("text" if name.startswith("text.") and not name.startswith("text.proj")
                 else "image" if name.startswith("visual.trunk.") else "head")
        groups.setdefault((no_decay, tower), []).append(p)
    base = {"text": text_lr, "image": image_lr, "head": lr}
    return [{"params": ps, "weight_decay": 0.0 if nd else wd, "base_lr": base[tower], "lr": base[tower]}
            for (nd, tower), ps in groups.items()]
