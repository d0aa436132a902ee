"""The caption channel's sentence encoder (the bundled all-MiniLM-L6-v2), offline."""

from __future__ import annotations

import numpy as np
import pytest

from training.errors import EncoderLoadError
from training.sentence_encoder import load_sentence_encoder


def test_batches_by_length_give_the_one_by_one_outputs_in_input_order() -> None:
    encoder = load_sentence_encoder("minilm", device="cpu", precision="fp32")
    texts = [
        "Axial CT of the chest with contrast showing a right upper lobe mass " * 6,
        "MRI",
        "H&E stained liver section with macrovesicular steatosis",
        "",
        "Western blot of p53 in HeLa cells after irradiation, with actin as loading control",
    ]
    batched = encoder.encode_texts(texts, batch_size=2)
    single = np.concatenate([encoder.encode_texts([t]) for t in texts])
    assert batched.shape == (len(texts), encoder.dim) == (5, 384) and batched.dtype == np.float32
    assert np.abs(batched - single).max() < 1e-5
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    # meaning: the steatosis caption is nearer a liver query than the western blot is
    query = encoder.encode_texts(["fatty liver histology"])[0]
    assert batched[2] @ query > batched[4] @ query
    assert encoder.encode_texts([]).shape == (0, 384)
    # at the default precision (bf16 autocast on a CPU with native bf16) the vectors stay unit
    # length and within a cosine of 0.99 of float32
    fast = load_sentence_encoder("minilm", device="cpu", precision="auto").encode_texts(texts, batch_size=2)
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert float((fast * batched).sum(axis=1).min()) > 0.99


def test_a_folder_that_is_not_a_model_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EncoderLoadError, match=r"config\.json"):
        load_sentence_encoder(str(tmp_path), device="cpu")
