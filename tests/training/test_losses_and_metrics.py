"""The multi-positive contrastive loss and the retrieval metrics."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from open_clip import ClipLoss

from training.evaluate import retrieval_metrics
from training.losses import multi_positive_clip_loss


def test_loss_equals_open_clip_clip_loss_when_captions_are_distinct() -> None:
    torch.manual_seed(0)
    img = F.normalize(torch.randn(8, 16), dim=-1)
    txt = F.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(10.0)
    ours = multi_positive_clip_loss(img, txt, torch.arange(8), scale)
    ref = ClipLoss()(img, txt, scale)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_identical_captions_are_positives_not_negatives() -> None:
    img = torch.eye(4)
    txt = torch.eye(4)
    txt[1] = txt[0]  # pairs 0 and 1 share a caption, so their text features are identical
    img[1] = img[0]
    scale = torch.tensor(50.0)
    multi = multi_positive_clip_loss(img, txt, torch.tensor([0, 0, 1, 2]), scale)
    single = multi_positive_clip_loss(img, txt, torch.arange(4), scale)
    assert single > 0.5  # treating the twin as a negative leaves log(2) per twin that cannot be trained away
    assert multi < 1e-3


def test_retrieval_metrics_perfect_and_chance() -> None:
    rng = np.random.default_rng(0)
    txt = rng.normal(size=(50, 32)).astype(np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    ids = np.repeat(np.arange(50), 2)  # each caption has two images
    perfect = retrieval_metrics(txt[ids], txt, ids)
    assert perfect["text_to_image"]["R@1"] == 1.0 and perfect["image_to_text"]["R@1"] == 1.0
    assert perfect["text_to_image"]["median_rank"] == 1.0
    t2i = perfect["text_to_image"]
    # chance with 2 positives among 100 images in the top 10: 1 - C(98,10)/C(100,10)
    assert abs(t2i["chance_R@10"] - (1 - (90 * 89) / (100 * 99))) < 1e-9
    assert abs(perfect["image_to_text"]["chance_R@10"] - 10 / 50) < 1e-9
    noise = rng.normal(size=(100, 32)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    rand = retrieval_metrics(noise, txt, ids)["image_to_text"]
    assert rand["R@10"] < 0.45 and rand["mean_rank"] > 10
