"""Outputs of a locked tower, computed once per dataset and kept on disk (LiT-style training).

A fully locked tower maps each image (or caption) to the same vector at every step, so training
needs its outputs only once: the image trunk's pooled features (before the trainable head) and the
text transformer's pooled output (before the trainable projection). :func:`cached_features` looks a
result up by a key over everything that determines it: the tower's weights, its config, the
preprocessing, the precision and the inputs (image files by path, size and mtime; captions and the
tokenizer's ids). A hit costs a file read, so later epochs and reruns train only the heads; a miss
computes and publishes the file atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

FEATURES_KEY = "features"


def _update_with_module(digest: Any, module: nn.Module) -> None:
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def cache_key(kind: str, module: nn.Module, settings: dict[str, Any], inputs: Sequence[str]) -> str:
    """A hex key over a tower's weights, ``settings`` (config, preprocessing, precision) and ``inputs``."""
    digest = hashlib.sha256()
    digest.update(kind.encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    _update_with_module(digest, module)
    for item in inputs:
        digest.update(item.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def image_inputs(paths: Sequence[Path]) -> list[str]:
    """Identity of image files for a cache key: resolved path, size and modification time."""
    out = []
    for path in paths:
        st = path.stat()
        out.append(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return out


def cached_features(cache_dir: Path | None, key: str, n: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``[n, d]`` float32 features: read from ``cache_dir/<key>.safetensors`` when present (and of
    ``n`` rows), else computed by ``compute()`` and written there atomically (no cache: computed)."""
    path = cache_dir / f"{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            feats = load_file(str(path))[FEATURES_KEY]
            if feats.shape[0] == n:
                return feats
        except (OSError, KeyError, RuntimeError):
            pass  # an unreadable cache file is recomputed and replaced
    feats = compute().float().cpu().contiguous()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({FEATURES_KEY: feats}, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return feats


def image_trunk_features(trunk: nn.Module, paths: Sequence[Path],
                         transform: Callable[[list[Image.Image]], torch.Tensor], device: str, *, bf16: bool,
                         batch_size: int = 32, progress: bool = True, desc: str = "locked image tower") -> torch.Tensor:
    """Pooled trunk features ``[n, d]`` of the images at ``paths`` (eval mode, ``transform`` batches PIL images)."""
    trunk.eval()
    chunks: list[torch.Tensor] = []
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    with torch.inference_mode(), torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
        for start in tqdm(range(0, len(paths), batch_size), desc=desc, disable=not progress):
            images = []
            for p in paths[start:start + batch_size]:
                with Image.open(p) as im:
                    images.append(im.convert("RGB"))
            chunks.append(trunk(transform(images).to(device)).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0)


def tokenize_all(tokenizer: Callable[[list[str]], torch.Tensor], captions: Sequence[str]) -> torch.Tensor:
    """Token ids ``[n, context]`` of ``captions``, tokenized 256 at a time."""
    return torch.cat([tokenizer(list(captions[i:i + 256])) for i in range(0, len(captions), 256)])


def text_pooled_features(text: nn.Module, tokens: torch.Tensor, pad: int, device: str, *, bf16: bool,
                         progress: bool = True, desc: str = "caching locked text tower") -> torch.Tensor:
    """Pooled outputs of a Hugging Face text tower (before its projection) for every row of ``tokens``.

    Captions are batched in order of length (each batch padded only to its longest, so one long
    caption does not pad a batch of short ones to the full context) and run under bf16 autocast
    when ``bf16``. Returns ``[n, width]`` float32 in the rows' order.
    """
    text.eval()
    order = torch.argsort((tokens != pad).sum(1), stable=True)
    out = torch.empty(0)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    with torch.inference_mode(), torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
        for i in tqdm(range(0, len(tokens), 128), desc=desc, disable=not progress):
            rows = order[i:i + 128]
            ids = tokens[rows]
            ids = ids[:, : max(int((ids != pad).sum(1).max()), 1)].to(device)
            mask = (ids != pad).long()
            pooled = text.pooler(text.transformer(input_ids=ids, attention_mask=mask), mask).float()
            if out.numel() == 0:
                out = torch.empty(len(tokens), pooled.shape[1], device=pooled.device)
            out[rows.to(pooled.device)] = pooled
    return out.clone()
