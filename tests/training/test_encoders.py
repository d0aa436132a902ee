"""The encoder contract: exported local-dir folders load through load_encoder and plain open_clip."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plain_open_clip import plain_open_clip_features

from training.encoders import load_encoder
from training.errors import EncoderLoadError

TEXTS = [
    "Axial contrast-enhanced CT shows a large hypodense mass in the right hepatic lobe with peripheral enhancement.",
    "pelvis radiograph",
    "Sagittal T2 MR of the lumbar spine.",
]


def _images(shared_data: Path, n: int = 3) -> list[Image.Image]:
    folder = shared_data / "medpix" / "images"
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.jpg"))[:n]]


def test_tiny_export_has_the_published_layout(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json", "config.json"} <= names
    doc = json.loads((tiny_model_dir / "open_clip_config.json").read_text())
    text = doc["model_cfg"]["text_cfg"]
    assert text["hf_model_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert text["context_length"] == 256
    assert str(tiny_model_dir.parent) not in (tiny_model_dir / "open_clip_config.json").read_text()
    assert (tiny_model_dir.parent / "config.json").is_file()  # resolved run config beside the output
    assert (tiny_model_dir.parent / "training_curves.png").stat().st_size > 1000


def test_encodes_unit_vectors_and_pads_to_longest_only(tiny_model_dir: Path, shared_data: Path) -> None:
    enc = load_encoder(f"local-dir:{tiny_model_dir}", device="cpu", precision="fp32")
    assert enc.model_id.startswith(f"{tiny_model_dir.name}-") and len(enc.model_id.rsplit("-", 1)[1]) == 12
    img = enc.encode_images(_images(shared_data), batch_size=2)
    txt = enc.encode_texts(TEXTS, batch_size=2)
    assert img.dtype == np.float32 and img.shape == (3, enc.dim)
    assert txt.dtype == np.float32 and txt.shape == (3, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(txt, enc.encode_texts_padded(TEXTS), atol=1e-5)  # same as padding to 256
    assert enc.encode_texts([]).shape == (0, enc.dim)


def test_moved_export_loads_by_plain_path_with_same_outputs(tiny_model_dir: Path, tmp_path: Path) -> None:
    before = load_encoder(str(tiny_model_dir), device="cpu")
    moved = tmp_path / "elsewhere" / tiny_model_dir.name
    shutil.copytree(tiny_model_dir, moved)
    after = load_encoder(str(moved), device="cpu")
    assert after.model_id == before.model_id
    np.testing.assert_allclose(after.encode_texts(TEXTS), before.encode_texts(TEXTS), atol=1e-6)


def test_plain_open_clip_loads_export_in_fresh_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    """No project code: open_clip.create_model_from_pretrained('local-dir:...') on a moved copy.

    The text tower's architecture is named by its hub id (as in the published BiomedCLIP config);
    offline, transformers finds that id's config.json in a Hugging Face cache, simulated here.
    """
    plain, _ = plain_open_clip_features(tiny_model_dir, tmp_path, TEXTS)
    ours = load_encoder(str(tiny_model_dir), device="cpu", precision="fp32").encode_texts(TEXTS)
    np.testing.assert_allclose(plain, ours, atol=1e-5)


def test_bad_specs_fail_with_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(EncoderLoadError, match="not found"):
        load_encoder(f"local-dir:{tmp_path / 'nope'}")
    with pytest.raises(EncoderLoadError, match=r"open_clip_config\.json"):
        load_encoder(str(tmp_path))
    with pytest.raises(EncoderLoadError, match="empty"):
        load_encoder("  ")


def test_hub_spec_offline_fails_fast_saying_what_to_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(EncoderLoadError, match="local-dir:PATH"):
        load_encoder("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    assert time.monotonic() - start < 10


def test_reduced_precision_stays_close_to_float32(tiny_model_dir: Path, shared_data: Path) -> None:
    """``auto`` precision (bf16 autocast on a CPU with native bf16) keeps embeddings within a cosine
    of 0.99 of float32, still unit length, and still pad-invariant at that tolerance."""
    from training.precision import autocast_dtype

    exact = load_encoder(str(tiny_model_dir), device="cpu", precision="fp32")
    fast = load_encoder(str(tiny_model_dir), device="cpu", precision="auto")
    assert exact.autocast is None and fast.autocast == autocast_dtype("cpu", "auto")
    images = _images(shared_data)
    for a, b in ((exact.encode_texts(TEXTS), fast.encode_texts(TEXTS)),
                 (exact.encode_images(images), fast.encode_images(images))):
        assert b.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-4)
        assert float((a * b).sum(axis=1).min()) > 0.99
    np.testing.assert_allclose(fast.encode_texts(TEXTS), fast.encode_texts_padded(TEXTS), atol=2e-2)


def test_precision_choices() -> None:
    import torch

    from training import precision

    assert precision.autocast_dtype("cpu", "fp32") is None
    assert precision.autocast_dtype("cuda:0", "auto") == torch.float16
    assert precision.autocast_dtype("cuda:0") == torch.float16  # auto unless told otherwise
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.autocast_dtype("cpu", "fp16x")


def test_one_encoder_serves_several_threads_at_once(tiny_model_dir: Path, shared_data: Path) -> None:
    """The service's queries and its re-index worker call one encoder concurrently: the results are
    those of one thread alone (only tokenization is serialised)."""
    from concurrent.futures import ThreadPoolExecutor

    enc = load_encoder(str(tiny_model_dir), device="cpu", precision="fp32")
    images = _images(shared_data)
    want_txt, want_img = enc.encode_texts(TEXTS), enc.encode_images(images)

    def work(i: int) -> tuple[np.ndarray, np.ndarray]:
        return enc.encode_texts(TEXTS[i % 3:] + TEXTS[: i % 3]), enc.encode_images(images)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(12)))
    for i, (txt, img) in enumerate(results):
        np.testing.assert_allclose(txt, np.roll(want_txt, -(i % 3), axis=0), atol=1e-5)
        np.testing.assert_allclose(img, want_img, atol=1e-5)
