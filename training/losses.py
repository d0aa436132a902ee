"""Contrastive loss with multi-positive targets, local to each rank with gather-with-grad under DDP."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gather(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """All-gather ``t`` across ranks keeping the autograd graph (open_clip's gather_with_grad)."""
    if world_size <= 1:
        return t
    import torch.distributed.nn as dist_nn

    return torch.cat(dist_nn.all_gather(t), dim=0)


def _gather_ids(ids: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size <= 1:
        return ids
    import torch.distributed as dist

    parts = [torch.zeros_like(ids) for _ in range(world_size)]
    dist.all_gather(parts, ids)
    return torch.cat(parts, dim=0)


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    probs = targets / targets.sum(dim=1, keepdim=True)
    return -(probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def multi_positive_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    caption_ids: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    world_size: int = 1,
) -> torch.Tensor:
    """Symmetric InfoNCE where pairs whose captions are identical are positives for each other.

    Args:
        image_features, text_features: ``[b, d]`` L2-normalised features of this rank's batch.
        caption_ids: ``[b]`` caption index per pair (equal ids = identical captions).
        logit_scale: the model's (log-space) temperature parameter, already exponentiated.
        world_size: ranks; > 1 gathers all features with gradients and computes the local loss
            (this rank's rows against every rank's columns), as open_clip's ``local_loss``.
    Returns the scalar loss. With all ids distinct it equals open_clip's ``ClipLoss``.
    """
    all_img = _gather(image_features, world_size)
    all_txt = _gather(text_features, world_size)
    all_ids = _gather_ids(caption_ids, world_size)
    logits_i2t = logit_scale * image_features @ all_txt.T
    logits_t2i = logit_scale * text_features @ all_img.T
    targets = (caption_ids[:, None] == all_ids[None, :]).to(logits_i2t.dtype)
    return 0.5 * (_soft_ce(logits_i2t, targets) + _soft_ce(logits_t2i, targets))
