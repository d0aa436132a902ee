"""The multi-positive contrastive loss and the retrieval metrics."""

from __future__ import annotations

import math

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


def _loss_and_grad(ids: torch.Tensor) -> tuple[float, float]:
    """Loss and image-feature gradient norm where pairs 0 and 1 share a caption (and an image)."""
    img = torch.eye(4)
    img[1] = img[0]
    img.requires_grad_(True)
    txt = torch.eye(4)
    txt[1] = txt[0]
    loss = multi_positive_clip_loss(img, txt, ids, torch.tensor(50.0))
    loss.backward()
    assert img.grad is not None
    return float(loss.detach()), float(img.grad.norm())


def test_identical_captions_are_positives_not_negatives() -> None:
    single_loss, single_grad = _loss_and_grad(torch.arange(4))
    multi_loss, multi_grad = _loss_and_grad(torch.tensor([0, 0, 1, 2]))
    # As negatives, the twins cost log(2) on each of the 2 twin rows (of 4), both ways, and the
    # gradient keeps pushing them apart; as positives the soft targets are already met: the loss
    # is at its minimum (the targets' entropy, the same value) and there is nothing left to push.
    assert abs(single_loss - math.log(2) / 2) < 1e-3
    assert abs(multi_loss - math.log(2) / 2) < 1e-3
    assert multi_grad < 1e-3  # the multi-positive optimum: nothing pushes the twins apart
    del single_grad  # (with identical texts the single-positive pushes cancel: not a distinguishing check)


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
