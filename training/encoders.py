"""Encoders for the indexer and the service: ``load_encoder(spec)`` -> :class:`ClipEncoder`, an
:class:`training.encoder_protocol.Encoder`.

Specs: ``local-dir:PATH`` or a plain ``PATH`` (an open_clip local-dir export, see
:mod:`training.export`), or ``hf-hub:NAME`` (a published open_clip model such as
``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``; offline it fails fast).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from PIL import Image

from training.encoder_protocol import Encoder, TextEncoder, longest_first
from training.errors import ConfigError, EncoderLoadError
from training.export import CONFIG_NAME
from training.fsio import file_sha256
from training.model_factory import instantiate, resolve_text_source
from training.precision import autocast, autocast_dtype
from training.preprocess import SplitTransform

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"

__all__ = ["ClipEncoder", "Encoder", "TextEncoder", "load_encoder", "load_hub", "load_local_dir", "longest_first",
           "resolve_device"]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class ClipEncoder:
    """A CLIP model with its preprocessing and tokenizer, encoding images and texts to unit vectors.

    Attributes:
        model_id: stable id (``<export folder>-<sha256(weights)[:12]>``, or the hub name).
        dim: embedding width.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:N``).
        precision: ``auto`` or ``fp32`` (see :mod:`training.precision`).
        autocast: the dtype both towers run in under autocast, or None (float32): with ``auto``,
            fp16 on a GPU, bf16 on a CPU with native bf16, else None.

    Outputs are float32 either way. An encoder may be called from several threads at once: only
    tokenization is serialised. (The service does not rely on it: its queries and its in-process
    re-index worker share one encoder whose passes all run, one after another, on one encoder thread:
    :class:`app.encoder_host.EncoderHost`.)
    """

    def __init__(self, model: torch.nn.Module, preprocess: Any, tokenizer: Any, *, model_id: str,
                 device: str, precision: str = "auto") -> None:
        self.model = model.to(device).eval()
        self.precision = precision
        self.autocast = autocast_dtype(device, self.precision)
        # CPU bf16 has no fast depthwise-convolution kernels (EfficientNet ran 8x slower than in fp32)
        self.image_autocast = None if not device.startswith("cuda") and _has_depthwise_conv(model) else self.autocast
        self.preprocess = preprocess
        self._batch_preprocess = SplitTransform(preprocess)
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self._hf_text = hasattr(getattr(model, "text", None), "transformer") and hasattr(
            getattr(model, "text", None), "pooler")
        self.pad_id = int(getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", 0) or 0)
        self._tokenizer_lock = threading.Lock()
        with torch.inference_mode():
            probe = self._text_features(self._tokenize(["a"]))
        self.dim = int(probe.shape[1])

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids ``[n, context]``; one thread at a time (a Hugging Face fast tokenizer is not
        safe to share between threads, while the forward passes are)."""
        with self._tokenizer_lock:
            ids: torch.Tensor = self.tokenizer(texts)
        return ids

    def _text_features(self, ids: torch.Tensor) -> torch.Tensor:
        if self._hf_text:
            # pad only to the longest text in the batch: the HF tower masks padding, so outputs match
            longest = int((ids != self.pad_id).sum(dim=1).max().item()) if ids.numel() else 1
            ids = ids[:, : max(longest, 1)]
        with autocast(self.device, self.autocast):
            feats = self.model.encode_text(ids.to(self.device))
        return torch.nn.functional.normalize(feats.float(), dim=-1)  # in float32: unit length at any precision

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Encode PIL images -> float32 ``[n, dim]``, L2-normalised, in batches of ``batch_size``."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = images[start:start + batch_size]
                pixels = self._batch_preprocess([im.convert("RGB") for im in chunk]).to(self.device)
                with autocast(self.device, self.image_autocast):
                    feats = self.model.encode_image(pixels)
                out[start:start + len(chunk)] = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
        return out

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode texts -> float32 ``[n, dim]``, L2-normalised, in the input order.

        Texts are batched by length (longest first), and each batch is padded only to its longest
        text, so one long caption does not pad a whole batch of short ones; the outputs are the
        same as encoding each text alone.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = longest_first(texts)
        with torch.inference_mode():
            for start in range(0, len(order), max(1, batch_size)):
                rows = order[start:start + batch_size]
                feats = self._text_features(self._tokenize([str(texts[i]) for i in rows]))
                out[np.asarray(rows)] = feats.cpu().numpy()
        return out

    def encode_texts_padded(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts padded to the full context length, at the encoder's precision (the reference
        path that shows padding to the longest text in a batch changes nothing)."""
        with torch.inference_mode():
            ids = self._tokenize([str(t) for t in texts]).to(self.device)
            with autocast(self.device, self.autocast):
                feats = self.model.encode_text(ids)
            return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


def _has_depthwise_conv(model: torch.nn.Module) -> bool:
    """Whether the image tower holds grouped (depthwise) convolutions, as EfficientNets do."""
    visual = getattr(model, "visual", None)
    return visual is not None and any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in visual.modules())


def _weights_file(folder: Path) -> Path:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                 "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise EncoderLoadError(f"no open_clip weights (open_clip_model.safetensors) in {folder}")


def load_local_dir(folder: str | Path, device: str = "auto", precision: str = "auto") -> ClipEncoder:
    """Load an open_clip local-dir export from ``folder`` (offline; the folder may have moved)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise EncoderLoadError(f"model folder not found: {path}")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise EncoderLoadError(f"{path} is not an open_clip local-dir export (no {CONFIG_NAME})")
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
        model_cfg = doc["model_cfg"]
        text_cfg = model_cfg["text_cfg"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EncoderLoadError(f"malformed {cfg_path}: {exc}") from exc
    weights = _weights_file(path)
    model_cfg = json.loads(json.dumps(model_cfg))
    model_cfg["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in text_cfg:
        if (path / "config.json").is_file():
            model_cfg["text_cfg"]["hf_model_name"] = str(path.resolve())
        else:  # a published export without the tower's config: resolve the hub id locally
            try:
                source = resolve_text_source(text_cfg["hf_model_name"])
            except ConfigError as exc:
                raise EncoderLoadError(str(exc)) from exc
            if source.folder is None:
                raise EncoderLoadError(f"no config.json for text tower {text_cfg['hf_model_name']!r} in {path}")
            model_cfg["text_cfg"]["hf_model_name"] = str(source.folder)
        model_cfg["text_cfg"]["hf_model_pretrained"] = False
    try:
        model = instantiate(model_cfg)
        open_clip.load_checkpoint(model, str(weights), strict=True)
        tokenizer = open_clip.get_tokenizer(f"{LOCAL_DIR_PREFIX}{path.resolve()}")
    except (ConfigError, OSError, RuntimeError, ValueError, KeyError) as exc:
        raise EncoderLoadError(f"cannot load the model in {path}: {exc}") from exc
    pp = merge_preprocess_dict(PreprocessCfg(), doc.get("preprocess_cfg", {}))
    pp["size"] = model_cfg["vision_cfg"].get("image_size", 224)
    preprocess = image_transform_v2(PreprocessCfg(**pp), is_train=False)
    model_id = f"{path.resolve().name}-{file_sha256(weights)[:12]}"
    return ClipEncoder(
        model, preprocess, tokenizer, model_id=model_id, device=resolve_device(device), precision=precision
    )


def _check_hub_reachable(timeout_s: float = 3.0) -> None:
    """Open one TCP connection to the hub endpoint; raise ``OSError`` at once when it is unreachable."""
    from huggingface_hub import constants

    parsed = urlparse(constants.ENDPOINT)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with socket.create_connection((host, port), timeout=timeout_s):
        pass


def load_hub(name: str, device: str = "auto", precision: str = "auto") -> ClipEncoder:
    """Load a published open_clip model from the Hugging Face hub (or its local cache).

    Fails fast with :class:`EncoderLoadError` when neither the cache nor the hub has it.
    """
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(name, CONFIG_NAME, local_files_only=True)
    except Exception:
        try:
            _check_hub_reachable()
            hf_hub_download(name, CONFIG_NAME, etag_timeout=5)
        except Exception as exc:
            raise EncoderLoadError(
                f"hf-hub:{name} is not in the local Hugging Face cache and the hub cannot be reached "
                f"({type(exc).__name__}). Offline, pass local-dir:PATH of an exported model instead "
                "(e.g. one made by `biomedsearch train` / `biomedsearch export`)."
            ) from exc
    try:
        model, preprocess = open_clip.create_model_from_pretrained(f"{HF_HUB_PREFIX}{name}")
        tokenizer = open_clip.get_tokenizer(f"{HF_HUB_PREFIX}{name}")
    except Exception as exc:
        raise EncoderLoadError(f"cannot load hf-hub:{name}: {exc}. Offline, pass local-dir:PATH instead.") from exc
    return ClipEncoder(model, preprocess, tokenizer, model_id=name, device=resolve_device(device), precision=precision)


def load_encoder(spec: str, device: str = "auto", precision: str = "auto") -> ClipEncoder:
    """Load an encoder from ``local-dir:PATH``, a plain ``PATH`` or ``hf-hub:NAME``.

    ``device``: ``auto`` (GPU when present), ``cpu``, ``cuda`` or ``cuda:N``; ``precision``:
    ``auto`` (the default) or ``fp32`` (see :mod:`training.precision`).
    Raises :class:`EncoderLoadError` with a message saying what to pass instead.
    """
    spec = spec.strip()
    if not spec:
        raise EncoderLoadError("empty encoder spec: pass local-dir:PATH, a folder path or hf-hub:NAME")
    if spec.startswith(HF_HUB_PREFIX):
        name = spec[len(HF_HUB_PREFIX):]
        if not name:
            raise EncoderLoadError("empty hub name after 'hf-hub:'")
        return load_hub(name, device, precision)
    if spec.startswith(LOCAL_DIR_PREFIX):
        spec = spec[len(LOCAL_DIR_PREFIX):]
    return load_local_dir(spec, device, precision)
