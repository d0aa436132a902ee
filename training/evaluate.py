"""Evaluation: cross-modal retrieval (Recall@K, median/mean rank, both ways) and zero-shot classification.

Captions are deduplicated before retrieval: a text query is one distinct caption, and every image
carrying that caption is a correct answer (MedPix repeats captions within a case). Chance levels
are computed exactly for each query's number of positives, so they sit beside every figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from training.data import Pair, caption_key

KS = (1, 5, 10)
BIOMEDCLIP_TEMPLATES = (
    "{}.",
    "{} presented in image.",
    "this is an image of {}.",
    "an image of {}.",
    "a photo of {}.",
)


# How a class is named inside the prompt templates (BiomedCLIP prompts name what the image shows)
PROMPT_NAMES = {"CT": "a CT scan", "MR": "an MRI scan", "XR": "an X-ray radiograph", "US": "an ultrasound image",
                "NM": "a nuclear medicine scan", "AN": "an angiogram"}


def modality_group(label: str) -> str:
    """MedPix modality labels by modality: ``"CT - noncontrast"`` -> ``"CT"``, ``"MR - T2 weighted"`` -> ``"MR"``."""
    return label.split(" - ", 1)[0].strip()


class _TextEncodes(Protocol):
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray: ...


class _Encodes(Protocol):
    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray: ...


def _chance_recall(n: int, positives: np.ndarray, k: int) -> float:
    """Mean over queries of P(at least one of p positives in a random top-k of n)."""
    vals = [1.0 - (math.comb(n - int(p), k) / math.comb(n, k) if n - p >= k else 0.0) for p in positives]
    return float(np.mean(vals))


def _ranks(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """1-based rank of the best-scoring positive per row (``positive`` is a boolean mask)."""
    best_pos = np.where(positive, scores, -np.inf).max(axis=1)
    return 1 + (np.where(positive, -np.inf, scores) > best_pos[:, None]).sum(axis=1)


def _summary(ranks: np.ndarray, n_gallery: int, n_pos: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in KS:
        out[f"R@{k}"] = float((ranks <= k).mean())
        out[f"chance_R@{k}"] = _chance_recall(n_gallery, n_pos, k)
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(ranks.mean())
    out["chance_mean_rank"] = float(np.mean((n_gallery + 1) / (n_pos + 1)))
    out["queries"] = len(ranks)
    out["gallery"] = n_gallery
    return out


def retrieval_metrics(image_features: np.ndarray, text_features: np.ndarray,
                      caption_ids: Sequence[int]) -> dict[str, dict[str, float]]:
    """Retrieval metrics from L2-normalised features.

    Args:
        image_features: ``[n, d]``, one row per image.
        text_features: ``[m, d]``, one row per distinct caption.
        caption_ids: ``[n]``, the distinct caption of each image (index into ``text_features``).
    Returns ``{"text_to_image": {...}, "image_to_text": {...}}`` with R@1/5/10, their chance levels,
    median and mean rank (1-based) and chance mean rank.
    """
    ids = np.asarray(caption_ids)
    n, m = len(image_features), len(text_features)
    sims = text_features @ image_features.T  # [m, n]
    pos_t2i = ids[None, :] == np.arange(m)[:, None]
    t2i = _summary(_ranks(sims, pos_t2i), n, pos_t2i.sum(axis=1))
    pos_i2t = pos_t2i.T
    i2t = _summary(_ranks(sims.T, pos_i2t), m, np.ones(n))
    return {"text_to_image": t2i, "image_to_text": i2t}


def distinct_captions(pairs: Sequence[Pair]) -> tuple[list[str], list[int]]:
    """Distinct captions (by :func:`caption_key`) and each pair's index into them (one rule for every evaluation)."""
    keys: dict[str, int] = {}
    captions: list[str] = []
    ids: list[int] = []
    for pair in pairs:
        key = caption_key(pair.caption)
        if key not in keys:
            keys[key] = len(captions)
            captions.append(pair.caption)
        ids.append(keys[key])
    return captions, ids


def evaluate_retrieval(encoder: _Encodes, pairs: Sequence[Pair], *, batch_size: int = 64) -> dict[str, Any]:
    """Encode ``pairs`` with ``encoder`` and return :func:`retrieval_metrics` plus counts."""
    captions, ids = distinct_captions(pairs)
    images = [Image.open(p.image).convert("RGB") for p in pairs]
    img = encoder.encode_images(images, batch_size=batch_size)
    txt = encoder.encode_texts(captions, batch_size=batch_size)
    result: dict[str, Any] = dict(retrieval_metrics(img, txt, ids))
    result["pairs"] = len(pairs)
    result["distinct_captions"] = len(captions)
    return result


def class_embeddings(encoder: _TextEncodes, prompts: Sequence[Sequence[str]]) -> np.ndarray:
    """A zero-shot classifier's weights: per class, the mean of its prompts' text embeddings, made unit
    length (BiomedCLIP's recipe). ``prompts[i]`` are class ``i``'s filled-in templates; returns float32
    ``[classes, dim]``, so ``image_features @ weights.T`` scores each image against each class."""
    weights = []
    for texts in prompts:
        mean = np.asarray(encoder.encode_texts(list(texts)), dtype=np.float32).mean(axis=0)
        weights.append(mean / np.linalg.norm(mean))
    return np.stack(weights).astype(np.float32)


def zero_shot_accuracy(encoder: _Encodes, images: Sequence[Image.Image], labels: Sequence[str],
                       class_names: Sequence[str], templates: Sequence[str] = BIOMEDCLIP_TEMPLATES) -> dict[str, Any]:
    """Zero-shot classification: each class is the mean of its prompt embeddings (BiomedCLIP's prompts).

    ``class_names`` are placed in the templates through :data:`PROMPT_NAMES` when listed there.
    Returns accuracy, chance (1 / classes), the class list, per-class accuracy and per-class counts.
    """
    classes = list(class_names)
    w = class_embeddings(encoder, [[t.format(PROMPT_NAMES.get(name, name)) for t in templates] for name in classes])
    feats = encoder.encode_images(images)
    pred = (feats @ w.T).argmax(axis=1)
    truth = np.array([classes.index(label) for label in labels])
    per_class = {c: float((pred[truth == i] == i).mean()) for i, c in enumerate(classes) if (truth == i).any()}
    return {"accuracy": float((pred == truth).mean()), "chance": 1.0 / len(classes), "classes": classes,
            "n": len(truth), "per_class_accuracy": per_class,
            "per_class_n": {c: int((truth == i).sum()) for i, c in enumerate(classes)},
            "prompts": {c: [t.format(PROMPT_NAMES.get(c, c)) for t in templates] for c in classes}}
