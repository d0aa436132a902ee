"""Inference precision of the encoders: which autocast dtype a forward pass runs in.

``auto`` (the default): fp16 autocast on a GPU; bf16 autocast on a CPU with native bf16 (oneDNN
reports AVX512-BF16 / AMX); float32 elsewhere. ``fp32``: float32 everywhere (bit-for-bit what plain
open_clip computes). Outputs are float32 either way.

Measured on this project's 2-core AVX512-BF16 CPU, one thread, random-init exports: bf16 autocast
doubles batch throughput for every tower (BERT-base text 4.3 -> 8.2 texts/s, the tiny MiniLM text
tower 32 -> 57 texts/s, the tiny ResNet-18 image tower 56 -> 112 images/s) and cuts a single
BERT-base query from 67 to 50 ms, at a cosine of 0.996-0.997 or more to the float32 embedding.

There is no process-wide default: every encoder is given its precision when it is loaded (the entry
points pass ``Settings.encoder_precision``, ``BIOMEDSEARCH_ENCODER_PRECISION``; a library caller
that passes nothing gets ``auto``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS: tuple[str, ...] = ("auto", "fp32")


def _checked(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def autocast_dtype(device: str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for a forward pass on ``device`` at ``precision`` (None: float32).

    Inputs: a device string (``cpu``, ``cuda``, ``cuda:N``) and ``auto`` / ``fp32``. Returns
    ``torch.float16``, ``torch.bfloat16`` or None; raises ValueError for any other precision.
    """
    if _checked(precision) == "fp32":
        return None
    if str(device).startswith("cuda"):
        return torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def autocast(device: str, dtype: torch.dtype | None) -> Any:
    """An autocast context for ``device`` in ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=dtype)
