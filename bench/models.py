"""Encoders for the benchmarks: random-init exports of the shipped configs (speed, not quality).

``biomedclip-tiny`` (ResNet-18 at 128 px + MiniLM-L6 text tower, embed 256) and ``biomedclip-base``
(ViT-B/16 at 224 px + a BERT-base text tower, embed 512: BiomedCLIP's size) are built offline
through :mod:`training.model_factory` and exported with :mod:`training.export` into
``models_dir/<name>`` (outside the repository), once; later runs reuse them. The base config's
PubMedBERT tokenizer is not on this host, so it gets the bundled BERT-uncased WordPiece vocabulary
of MiniLM (30,522 entries, the same size as the tower's embedding table): token counts, and so
speed, are those of an uncased BERT vocabulary.
"""

from __future__ import annotations

from pathlib import Path

from training.export import CONFIG_NAME, export_model
from training.model_factory import MINILM_HUB_ID, build_model, load_config, resolve_text_source


def ensure_model(name: str, models_dir: Path) -> Path:
    """The export folder of config ``name`` under ``models_dir``, built and exported when missing."""
    out = models_dir / name
    if (out / CONFIG_NAME).is_file():
        return out
    import torch

    torch.manual_seed(0)
    config = load_config(name)
    tokenizer_dir = None
    if name == "biomedclip-base":
        tokenizer_dir = resolve_text_source(MINILM_HUB_ID).folder
    built = build_model(config, pretrained_text=False, tokenizer_dir=tokenizer_dir)
    return export_model(built, out, extra={"note": "random init, for speed benchmarks only"})
