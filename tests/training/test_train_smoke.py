"""CPU smoke training through the real entry point (``biomedsearch train``) on synthetic pairs.

Fast tier (no ``tiny_model_dir``): a few optimizer steps of ``biomedclip-tiny-resnet18`` (the earlier
default: random resnet18 + the pretrained MiniLM tower at 0.1x the learning rate, nothing cached),
then everything a run promises: resolved config, history, curves, resumable checkpoint, export that
loads through ``load_encoder`` and through plain open_clip in a fresh process, text padded to the
batch's longest = padded to 256.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from plain_open_clip import plain_open_clip_features
from typer.testing import CliRunner

from app.cli import cli
from training.encoders import load_encoder

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220)}
TEXTS = [
    "Axial contrast-enhanced CT shows a large hypodense mass in the right hepatic lobe with peripheral "
    "enhancement and a second, smaller lesion in segment four adjacent to the middle hepatic vein.",
    "pelvis radiograph",
    "Sagittal T2 MR of the lumbar spine.",
]


def _synthetic_pairs(folder: Path, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` images of a coloured shape with a caption naming it (two images per caption)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        shape = SHAPES[(i // 2) % len(SHAPES)]
        colour = list(COLOURS)[(i // 6) % len(COLOURS)]
        img = Image.new("RGB", (96, 80), tuple(int(x) for x in rng.integers(0, 60, 3)))
        draw = ImageDraw.Draw(img)
        x, y = int(rng.integers(10, 40)), int(rng.integers(5, 30))
        box = (x, y, x + 40, y + 40)
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(x, y + 40), (x + 20, y), (x + 40, y + 40)], fill=COLOURS[colour])
        name = f"{seed}-{i}.png"
        img.save(folder / name)
        rows.append({"image": f"images/{name}", "caption": f"a {colour} {shape} on a dark background",
                     "case_id": f"case{seed}-{i // 4}"})
    rows.append({"image": rows[0]["image"], "caption": "Replace this - DESCRIPTION OF THE IMAGE OR FINDINGS.",
                 "case_id": "placeholder"})
    return rows


def _write_jsonl(rows: list[dict[str, str]], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run ``biomedsearch train`` for 3 steps, then resume it for 1 more; return the run folder."""
    root = tmp_path_factory.mktemp("smoke")
    train = _write_jsonl(_synthetic_pairs(root / "images", 16, 0), root / "train.jsonl")
    val = _write_jsonl(_synthetic_pairs(root / "images", 8, 1), root / "val.jsonl")
    run = root / "run"
    args = ["train", "--config", "biomedclip-tiny-resnet18", "--data", str(train), "--val", str(val),
            "--out", str(run), "--epochs", "3", "--batch-size", "8", "--device", "cpu", "--seed", "0"]
    env = {"BIOMEDSEARCH_DATA_HOME": str(root / "home")}
    first = CliRunner().invoke(cli, [*args, "--max-steps", "3"], env=env)
    assert first.exit_code == 0, first.output
    assert "3 steps" in first.output and "t->i R@10" in first.output
    second = CliRunner().invoke(cli, [*args, "--max-steps", "4"], env=env)  # resumes from checkpoints/last.pt
    assert second.exit_code == 0, second.output
    assert "4 steps" in second.output
    return run


def test_train_writes_config_history_curves_and_checkpoint(smoke_run: Path) -> None:
    cfg = json.loads((smoke_run / "config.json").read_text())
    assert cfg["model"]["name"] == "biomedclip-tiny-resnet18"
    assert cfg["recipe"]["batch_size"] == 8
    assert cfg["recipe"]["lock_text"] is False and cfg["recipe"]["text_lr_scale"] == 0.1
    assert cfg["train_pairs"] == 16 and cfg["dropped_captions"] == {"placeholder": 1}
    assert cfg["distinct_train_captions"] == 8  # identical captions share one id (multi-positive)
    assert cfg["text_pretrained_loaded"] is True
    history = json.loads((smoke_run / "history.json").read_text())
    losses = [h for h in history if "loss" in h]
    assert [h["step"] for h in losses] == [1, 2, 3, 4]  # 3 steps, then 1 more after the resume
    assert all(np.isfinite(h["loss"]) for h in losses)
    assert any("val" in h for h in history)
    assert (smoke_run / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (smoke_run / "checkpoints" / "last.pt").is_file()
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 0.0 <= metrics["val"]["text_to_image"]["R@10"] <= 1.0


def test_export_loads_and_pads_texts_to_the_longest_in_batch(smoke_run: Path) -> None:
    export = smoke_run / "biomedclip-tiny-resnet18"
    enc = load_encoder(f"local-dir:{export}", device="cpu", precision="fp32")
    txt = enc.encode_texts(TEXTS, batch_size=2)
    assert txt.shape == (3, enc.dim) and txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    ids = enc.tokenizer(TEXTS)
    assert int((ids != enc.pad_id).sum(1).max()) < 256  # so the short path really is shorter
    np.testing.assert_allclose(txt, enc.encode_texts_padded(TEXTS), atol=1e-5)  # same as padding to 256
    img = enc.encode_images([Image.new("RGB", (70, 50), (200, 30, 30)), Image.new("L", (40, 90), 128)])
    assert img.shape == (2, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)


def test_batched_preprocessing_matches_open_clip_per_image(smoke_run: Path) -> None:
    from open_clip.transform import image_transform_v2

    from training.model_factory import build_model, load_config
    from training.preprocess import SplitTransform

    built = build_model(load_config("biomedclip-tiny-resnet18"), pretrained_text=False)
    transform = image_transform_v2(built.preprocess_cfg, is_train=False)
    images = [Image.open(p).convert("RGB") for p in sorted((smoke_run.parent / "images").glob("*.png"))[:4]]
    split = SplitTransform(transform)
    assert split.split
    assert torch.equal(split(images), torch.stack([transform(im) for im in images]))


def test_export_round_trips_through_plain_open_clip_in_a_fresh_process(smoke_run: Path, tmp_path: Path) -> None:
    """No project code, folder moved: ``open_clip.create_model_from_pretrained('local-dir:...')``.

    The text tower is named by its hub id, as in the published BiomedCLIP config; offline,
    transformers reads that id's config.json from a Hugging Face cache (simulated here).
    """
    export = smoke_run / "biomedclip-tiny-resnet18"
    image = tmp_path / "probe.png"
    Image.new("RGB", (64, 64), (30, 160, 30)).save(image)
    plain_text, plain_image = plain_open_clip_features(export, tmp_path, TEXTS, image)
    ours = load_encoder(str(export), device="cpu", precision="fp32")
    np.testing.assert_allclose(plain_text, ours.encode_texts(TEXTS), atol=1e-5)
    np.testing.assert_allclose(plain_image, ours.encode_images([Image.open(image).convert("RGB")]), atol=1e-5)


def test_bad_training_input_exits_non_zero_with_a_message(tmp_path: Path) -> None:
    env = {"BIOMEDSEARCH_DATA_HOME": str(tmp_path / "home")}
    missing = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "nope.jsonl"), "--out",
                                       str(tmp_path / "run"), "--device", "cpu"], env=env)
    assert missing.exit_code != 0 and "not found" in missing.output
    unknown = CliRunner().invoke(cli, ["train", "--config", "no-such-config", "--data", str(tmp_path / "x.jsonl"),
                                       "--out", str(tmp_path / "run"), "--device", "cpu"], env=env)
    assert unknown.exit_code != 0 and "unknown model config" in unknown.output


def test_scratch_text_tower_with_a_domain_wordpiece(tmp_path: Path) -> None:
    """``train-tokenizer`` then a scratch text transformer on that vocabulary (the unlocked text path)."""
    rows = _synthetic_pairs(tmp_path / "images", 8, 2)
    train = _write_jsonl(rows, tmp_path / "train.jsonl")
    env = {"BIOMEDSEARCH_DATA_HOME": str(tmp_path / "home")}
    tok = CliRunner().invoke(cli, ["train-tokenizer", "--captions", str(train), "--out", str(tmp_path / "wp"),
                                   "--vocab-size", "120", "--min-frequency", "1"], env=env)
    assert tok.exit_code == 0, tok.output
    assert "context 256: 100.0%" in tok.output
    done = CliRunner().invoke(cli, ["train", "--config", "biomedclip-tiny-scratch", "--tokenizer", str(tmp_path / "wp"),
                                    "--data", str(train), "--out", str(tmp_path / "run"), "--epochs", "1",
                                    "--batch-size", "4", "--max-steps", "2", "--device", "cpu"], env=env)
    assert done.exit_code == 0, done.output
    export = tmp_path / "run" / "biomedclip-tiny-scratch"
    cfg = json.loads((export / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"] == "wp"  # portable: no host path
    assert cfg["model_cfg"]["text_cfg"]["vocab_size"] < 200
    enc = load_encoder(str(export), device="cpu")
    assert enc.encode_texts(["a red circle", "a blue square on a dark background"]).shape == (2, enc.dim)


def test_frozen_text_cache_matches_the_text_tower() -> None:
    """The LiT shortcut (pooled outputs cached once, projection trained) equals running the tower."""
    from training.feature_cache import text_pooled_features, tokenize_all
    from training.model_factory import build_model, load_config

    built = build_model(load_config("biomedclip-tiny"), pretrained_vision=False)
    model = built.model.eval()
    assert built.tokenizer is not None
    tokens = tokenize_all(built.tokenizer, TEXTS)
    cached = text_pooled_features(model.text, tokens, int(built.tokenizer.tokenizer.pad_token_id or 0), "cpu",
                                  bf16=False, progress=False)
    with torch.no_grad():
        via_cache = torch.nn.functional.normalize(model.text.proj(cached), dim=-1)
        direct = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(via_cache, direct, atol=1e-5, rtol=1e-4)


@pytest.mark.e2e
def test_torchrun_ddp_on_cpu_two_ranks(tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m app.cli train``: DDP over gloo, local loss with gather-with-grad
    (with the locked text tower: the cached-features path)."""
    train = _write_jsonl(_synthetic_pairs(tmp_path / "images", 32, 0), tmp_path / "train.jsonl")
    run = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BIOMEDSEARCH_DATA_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
         "127.0.0.1:0", "-m", "app.cli", "train", "--config", "biomedclip-tiny", "--data", str(train), "--out",
         str(run), "--epochs", "2", "--batch-size", "8", "--max-steps", "3", "--device", "cpu", "--threads", "1",
         "--lock-text"],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["recipe"]["lock_text"] is True
    losses = [h for h in json.loads((run / "history.json").read_text()) if "loss" in h]
    assert [h["step"] for h in losses] == [1, 2, 3]  # 32 pairs / (8 x 2 ranks) = 2 steps per epoch
    assert load_encoder(str(run / "biomedclip-tiny"), device="cpu").dim == 256
