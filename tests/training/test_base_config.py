"""``biomedclip-base`` (the published BiomedCLIP layout) builds offline and loads like any export.

ViT-B/16 + BERT-base, ~200M random parameters written (0.8 GB) and read back: 8 s on a quiet
2-core machine, 32 s on a loaded one, so it stays in the fast tier (marked slow).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from app.cli import cli
from training.encoders import load_encoder
from training.model_factory import MINILM_HUB_ID, load_config, resolve_text_source


def test_base_config_is_the_published_layout() -> None:
    cfg = load_config("biomedclip-base").model_cfg
    assert cfg["embed_dim"] == 512
    assert cfg["vision_cfg"]["timm_model_name"] == "vit_base_patch16_224"
    assert cfg["vision_cfg"]["image_size"] == 224 and cfg["vision_cfg"]["timm_proj"] == "linear"
    text = cfg["text_cfg"]
    assert text["hf_model_name"] == "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    assert text["context_length"] == 256
    assert text["hf_proj_type"] == "mlp" and text["hf_pooler_type"] == "cls_last_hidden_state_pooler"


@pytest.mark.slow
def test_base_builds_offline_and_loads_through_load_encoder(tmp_path: Path) -> None:
    # No BiomedBERT here: random init from the architecture-only config; the tokenizer is a BERT
    # uncased 30,522-token WordPiece (MiniLM's), the same vocabulary size as BiomedBERT's.
    bert_vocab = resolve_text_source(MINILM_HUB_ID).folder
    assert bert_vocab is not None
    out = tmp_path / "biomedclip-base"
    done = CliRunner().invoke(cli, ["export", "--config", "biomedclip-base", "--tokenizer", str(bert_vocab),
                                    "--out", str(out)], env={"BIOMEDSEARCH_DATA_HOME": str(tmp_path / "home")})
    assert done.exit_code == 0, done.output
    doc = json.loads((out / "open_clip_config.json").read_text())
    assert doc["model_cfg"]["text_cfg"]["hf_model_name"] == "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 768
    enc = load_encoder(f"local-dir:{out}", device="cpu", precision="fp32")
    assert enc.dim == 512
    texts = ["Axial CT of the chest shows a right upper lobe nodule.", "brain MRI"]
    txt = enc.encode_texts(texts)
    img = enc.encode_images([Image.new("RGB", (300, 240), (90, 90, 90))])
    assert txt.shape == (2, 512) and img.shape == (1, 512)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(txt, enc.encode_texts_padded(texts), atol=1e-4)  # CLS pooler, mask: pad-invariant
