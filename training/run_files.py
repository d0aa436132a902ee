"""A training run's files: JSON written atomically and the resumable checkpoint, loaded safely."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.errors import ConfigError


def atomic_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file + fsync + rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Save the trainable weights and buffers (not the locked, restorable ones), the optimizer and ``state``."""
    params = dict(model.named_parameters())
    weights = {k: v for k, v in model.state_dict().items() if k not in params or params[k].requires_grad}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"model": weights, "optimizer": optimizer.state_dict(), **state}, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``: tensors and
    plain containers only, so a tampered file cannot run code. Raises :class:`ConfigError` otherwise."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # any unreadable checkpoint is the same user error
        raise ConfigError(f"cannot read checkpoint {path} (safe loading, tensors only): {exc}") from exc
    if not isinstance(ckpt, dict) or not {"model", "optimizer", "step", "epoch", "history"} <= set(ckpt):
        raise ConfigError(f"{path} is not a training checkpoint")
    return ckpt
