"""The training-curve PNG: loss per step and validation Recall@K per evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.fsio import atomic_path


def plot_history(history: Sequence[dict[str, Any]], out_png: str | Path, *, title: str = "") -> Path:
    """Plot ``history`` (dicts with ``step`` and ``loss`` or ``val``) to ``out_png`` (atomic write).

    Left axis: training loss; right panel: text->image and image->text R@10 (with chance).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_png)
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    vals = [(h["step"], h["val"]) for h in history if "val" in h]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    if losses:
        ax_loss.plot([s for s, _ in losses], [v for _, v in losses], lw=1)
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("contrastive loss")
    ax_loss.set_title("training loss")
    for direction, label in (("text_to_image", "text→image"), ("image_to_text", "image→text")):
        if vals:
            steps = [s for s, _ in vals]
            line = ax_val.plot(steps, [v[direction]["R@10"] for _, v in vals], marker="o", label=f"{label} R@10")
            ax_val.plot(steps, [v[direction]["chance_R@10"] for _, v in vals], ls="--",
                        color=line[0].get_color(), alpha=0.6, label=f"{label} chance")
    ax_val.set_xlabel("optimizer step")
    ax_val.set_ylabel("Recall@10 (validation)")
    ax_val.set_title("validation retrieval")
    if vals:
        ax_val.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return out
