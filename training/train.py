"""The training loop: BiomedCLIP's recipe on an open_clip model, on one CPU/GPU or many (torchrun/DDP).

Recipe knobs (``TrainOptions``; unset ones come from the config's ``recipe`` section): AdamW betas /
eps / weight decay, peak lr with linear warm-up and cosine decay, epochs, batch size, gradient
accumulation, bf16 autocast, gradient checkpointing, patch dropout (ViT towers), locking of either
tower (fully, or all but its last N layers / layer groups, see :mod:`training.locking`) and lower
learning rates for the trainable parts of the towers.

Each run writes into ``out_dir``: ``config.json`` (the resolved config and options),
``history.json`` + ``training_curves.png`` (loss and validation Recall@10), ``checkpoints/last.pt``
(resumable), ``metrics.json`` and the exported encoder ``<config name>/`` (an open_clip local-dir folder).

LiT-style: when a tower is fully locked its outputs cannot change, so they are computed once per
dataset (the image trunk's pooled features of each image, without augmentation; the text tower's
pooled output of each distinct caption), kept in ``feature_cache`` on disk under a key of weights,
config, preprocessing and data (:mod:`training.feature_cache`), and only the heads run per step.
With both towers locked a run is a few seconds of head training after one feature pass.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transform import image_transform_v2
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from training.data import Pair, PairDataset, filter_pairs, read_pairs
from training.encoders import ClipEncoder as Encoder
from training.encoders import resolve_device
from training.errors import ConfigError, DataError
from training.export import export_model
from training.feature_cache import (
    cache_key,
    cached_features,
    image_inputs,
    image_trunk_features,
    text_pooled_features,
    tokenize_all,
)
from training.locking import Locks, apply_locks, param_groups, set_train_mode
from training.losses import multi_positive_clip_loss
from training.model_factory import BuiltModel, build_model, load_config
from training.plots import plot_history
from training.preprocess import SplitTransform
from training.run_files import atomic_json, load_checkpoint, save_checkpoint
from training.validation import FrozenOutputs, Validator, distinct_captions

RECIPE_DEFAULTS: dict[str, Any] = {
    "lr": 5e-4, "beta1": 0.9, "beta2": 0.98, "eps": 1e-6, "weight_decay": 0.2, "warmup_steps": 2000,
    "epochs": 32, "batch_size": 256, "precision": "bf16", "grad_checkpointing": False, "patch_dropout": 0.0,
    "lock_text": False, "lock_text_unlocked_layers": 0, "text_lr_scale": 1.0, "aug_scale_min": 0.9,
    "lock_image": False, "lock_image_unlocked_groups": 0, "image_lr_scale": 1.0,
}


# Config fields that determine a locked tower's cached outputs (the weights are keyed separately)
TRUNK_KEYS = ("timm_model_name", "timm_pool", "image_size", "timm_model_pretrained")
TEXT_TOWER_KEYS = ("hf_model_name", "hf_tokenizer_name", "hf_pooler_type", "context_length")


@dataclass
class DistInfo:
    """Where this process sits in a torchrun job (``world_size`` 1 = a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


@dataclass
class TrainOptions:
    """One training run. ``None`` recipe fields are taken from the config's ``recipe`` section."""

    config: str  # config name (``biomedclip-tiny``) or path to a config JSON
    train_data: Path  # JSONL manifest of image/caption pairs
    out_dir: Path
    val_data: Path | None = None  # held-out JSONL (split by case/article); None: no validation
    epochs: int | None = None
    batch_size: int | None = None  # per process, per micro-batch
    accum_steps: int = 1  # micro-batches per optimizer step (per-micro-batch negatives)
    lr: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    precision: str | None = None  # "bf16" (autocast) or "fp32"
    grad_checkpointing: bool | None = None
    patch_dropout: float | None = None  # fraction of ViT patches dropped while training
    lock_text: bool | None = None  # freeze the text tower (LiT)
    lock_text_unlocked_layers: int | None = None  # with lock_text: leave the last N layers trainable
    text_lr_scale: float | None = None  # text-tower lr = lr * this
    lock_image: bool | None = None  # freeze the image trunk (LiT); its head still trains
    lock_image_unlocked_groups: int | None = None  # with lock_image: leave the trunk's last N layer groups trainable
    image_lr_scale: float | None = None  # image-trunk lr = lr * this (for unlocked groups)
    aug_scale_min: float | None = None  # random-resized-crop keeps at least this share of the image (open_clip 0.9)
    pretrained_text: bool = True  # False: same text tower, random init (ablation)
    pretrained_vision: bool = True  # False: the config's vision_init is not loaded (random trunk, ablation)
    feature_cache: Path | None = None  # where frozen towers' outputs are kept between runs (None: memory only)
    tokenizer_dir: Path | None = None  # use this tokenizer (e.g. a domain WordPiece) instead of the config's
    context_length: int | None = None
    text_dirs: dict[str, str] = field(default_factory=dict)  # hub id -> local folder (e.g. PubMedBERT)
    min_caption_words: int = 2
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs, fixed budgets)
    seed: int = 0
    workers: int = 0  # DataLoader worker processes (0: decode in the training process; cheap for small images)
    threads: int | None = None  # torch CPU threads (None: torch's default). 1 is fastest on a shared, busy CPU
    val_every_epochs: int = 1
    device: str = "auto"
    resume: bool = True
    progress: bool = True
    export: bool = True
    dist: DistInfo = field(default_factory=DistInfo)


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    export_dir: Path | None
    steps: int
    epochs_done: int
    final_loss: float
    val: dict[str, Any] | None
    seconds: float
    plot: Path | None

    def summary(self) -> str:
        """One line: steps, loss, validation R@10 with chance, where the model went."""
        parts = [f"{self.steps} steps / {self.epochs_done} epochs in {self.seconds:.0f}s",
                 f"final loss {self.final_loss:.3f}"]
        if self.val:
            for key, label in (("text_to_image", "t->i"), ("image_to_text", "i->t")):
                v = self.val[key]
                parts.append(f"{label} R@10 {100 * v['R@10']:.1f}% (chance {100 * v['chance_R@10']:.1f}%)")
        if self.export_dir:
            parts.append(f"model: {self.export_dir}")
        return "; ".join(parts)


def _resolve(opts: TrainOptions, recipe: dict[str, Any]) -> dict[str, Any]:
    resolved = {}
    for key, default in RECIPE_DEFAULTS.items():
        value = getattr(opts, key)
        resolved[key] = value if value is not None else recipe.get(key, default)
    if resolved["precision"] not in ("bf16", "fp32"):
        raise ConfigError(f"precision must be bf16 or fp32, got {resolved['precision']!r}")
    for key in ("epochs", "batch_size"):
        if int(resolved[key]) < 1:
            raise ConfigError(f"{key} must be >= 1")
    if opts.accum_steps < 1:
        raise ConfigError("accum_steps must be >= 1")
    if not 0.0 < float(resolved["aug_scale_min"]) <= 1.0:
        raise ConfigError("aug_scale_min must be in (0, 1]")
    for key in ("lock_text_unlocked_layers", "lock_image_unlocked_groups"):
        if int(resolved[key]) < 0:
            raise ConfigError(f"{key} must be >= 0")
    return resolved


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class _ClipStep(nn.Module):
    """Forward of one training step (so DDP sees a single module): features + exp(logit_scale).

    With a cached tower its input is row indices into the cached outputs, and only its head runs.
    """

    def __init__(self, model: nn.Module, frozen: FrozenOutputs) -> None:
        super().__init__()
        self.model = model
        self.frozen = frozen

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.frozen.image is not None:  # ``images`` holds pair indices into the frozen trunk's features
            img = F.normalize(self.model.visual.head(self.frozen.image[images]), dim=-1)
        else:
            img = self.model.encode_image(images, normalize=True)
        if self.frozen.text is not None:  # ``text`` holds caption indices into the frozen pooled outputs
            txt = F.normalize(self.model.text.proj(self.frozen.text[text]), dim=-1)
        else:
            txt = self.model.encode_text(text, normalize=True)
        return img, txt, self.model.logit_scale.exp()


class _IndexedPairs(Dataset[tuple[int, int]]):
    """(pair index, caption index) per pair: the batches of a run whose image tower is cached."""

    def __init__(self, caption_ids: list[int]) -> None:
        self.caption_ids = caption_ids

    def __len__(self) -> int:
        return len(self.caption_ids)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, self.caption_ids[i]


@dataclass
class _Data:
    """A run's inputs: training pairs as a dataset, their tokens, validation pairs."""

    train_pairs: list[Pair]
    dropped: dict[str, int]
    dataset: PairDataset
    tokens: torch.Tensor
    pad: int
    train_transform: SplitTransform
    val_pairs: list[Pair] | None


def _setup_process(opts: TrainOptions) -> str:
    """Device, process group (torchrun), threads and seeds of this process; returns the device."""
    dist = opts.dist
    device = resolve_device(opts.device)
    if dist.world_size > 1:
        import torch.distributed as tdist

        if device.startswith("cuda"):
            device = f"cuda:{dist.local_rank}"
            torch.cuda.set_device(device)
        tdist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if opts.threads is not None:
        if opts.threads < 1:
            raise ConfigError("threads must be >= 1")
        torch.set_num_threads(int(opts.threads))
    random.seed(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    return device


def _build(opts: TrainOptions) -> tuple[BuiltModel, dict[str, Any]]:
    """The config's model (pretrained parts loaded) and the resolved recipe."""
    config = load_config(opts.config)
    r = _resolve(opts, config.recipe)
    if r["patch_dropout"]:
        config.model_cfg["vision_cfg"]["patch_dropout"] = float(r["patch_dropout"])
    built = build_model(config, pretrained_text=opts.pretrained_text, pretrained_vision=opts.pretrained_vision,
                        text_dirs=opts.text_dirs, tokenizer_dir=opts.tokenizer_dir, context_length=opts.context_length)
    if built.tokenizer is None:
        raise ConfigError("the config names no tokenizer available on this host (hf_tokenizer_name)")
    built.config.recipe = dict(r)
    return built, r


def _load_data(opts: TrainOptions, built: BuiltModel, r: dict[str, Any]) -> _Data:
    """Read and filter the pairs (placeholder / near-empty captions dropped) and tokenize the captions."""
    assert built.tokenizer is not None
    train_pairs, dropped = filter_pairs(read_pairs(opts.train_data), min_words=opts.min_caption_words)
    aug = {"scale": (float(r["aug_scale_min"]), 1.0)}
    train_transform = SplitTransform(image_transform_v2(built.preprocess_cfg, is_train=True, aug_cfg=aug))
    dataset = PairDataset(train_pairs, train_transform.pil)
    val_pairs = None
    if opts.val_data is not None:
        val_pairs, _ = filter_pairs(read_pairs(opts.val_data), min_words=opts.min_caption_words)
        if not val_pairs:
            raise DataError(f"no usable pairs in {opts.val_data}")
    return _Data(train_pairs=train_pairs, dropped=dropped, dataset=dataset,
                 tokens=tokenize_all(built.tokenizer, dataset.captions),
                 pad=int(built.tokenizer.tokenizer.pad_token_id or 0), train_transform=train_transform,
                 val_pairs=val_pairs)


def _frozen_outputs(built: BuiltModel, locks: Locks, paths: list[Path], captions: list[str], device: str,
                    cache_dir: Path | None, *, bf16: bool, progress: bool, split: str) -> FrozenOutputs:
    """The frozen towers' outputs for one split, read from / written to the feature cache."""
    model = built.model
    image = text = None
    if locks.image_frozen:
        pre = built.preprocess_cfg
        transform = SplitTransform(image_transform_v2(pre, is_train=False))
        # CPU bf16 has no fast depthwise-convolution kernels (8x slower than fp32 for EfficientNet here)
        image_bf16 = bf16 and device.startswith("cuda")
        vision = built.config.model_cfg["vision_cfg"]  # the trunk's part of it (heads do not change its outputs)
        settings = {"trunk": {k: vision.get(k) for k in TRUNK_KEYS}, "preprocess": asdict(pre), "bf16": image_bf16}
        key = cache_key("image", model.visual.trunk, settings, image_inputs(paths))
        image = cached_features(cache_dir, key, len(paths), lambda: image_trunk_features(
            model.visual.trunk, paths, transform, device, bf16=image_bf16, progress=progress,
            desc=f"locked image tower ({split})")).to(device)
    if locks.text_frozen:
        assert built.tokenizer is not None
        tokens = tokenize_all(built.tokenizer, captions)
        pad = int(built.tokenizer.tokenizer.pad_token_id or 0)
        text_cfg = built.config.model_cfg["text_cfg"]
        settings = {"tower": {k: text_cfg.get(k) for k in TEXT_TOWER_KEYS}, "pooler": type(model.text.pooler).__name__,
                    "bf16": bf16}
        key = cache_key("text", model.text.transformer, settings,
                        [",".join(map(str, row.tolist())) for row in tokens])
        text = cached_features(cache_dir, key, len(captions), lambda: text_pooled_features(
            model.text, tokens, pad, device, bf16=bf16, progress=progress,
            desc=f"locked text tower ({split})")).to(device)
    return FrozenOutputs(image=image, text=text)


def _optimizer(model: nn.Module, r: dict[str, Any], opts: TrainOptions) -> torch.optim.Optimizer:
    lr = float(r["lr"])
    text_lr = lr * float(r["text_lr_scale"] if opts.pretrained_text else 1.0)
    image_lr = lr * float(r["image_lr_scale"])
    groups = param_groups(model, lr, float(r["weight_decay"]), text_lr, image_lr)
    if not groups:
        raise ConfigError("nothing to train: every parameter is locked")
    return torch.optim.AdamW(groups, betas=(float(r["beta1"]), float(r["beta2"])), eps=float(r["eps"]))


def _write_run_config(out: Path, opts: TrainOptions, built: BuiltModel, r: dict[str, Any], data: _Data,
                      device: str) -> None:
    resolved_opts = {k: v for k, v in asdict(opts).items() if k != "dist"}
    atomic_json({"model": built.config.to_json(), "options": resolved_opts, "recipe": r,
                 "train_pairs": len(data.train_pairs), "dropped_captions": data.dropped,
                 "distinct_train_captions": len(data.dataset.captions), "world_size": opts.dist.world_size,
                 "text_pretrained_loaded": built.text_loaded_pretrained,
                 "vision_pretrained_loaded": built.vision_weights is not None, "device": device},
                out / "config.json")


@dataclass
class _Loop:
    """Everything one epoch of optimizer steps needs."""

    opts: TrainOptions
    r: dict[str, Any]
    model: nn.Module
    step_module: nn.Module
    optimizer: torch.optim.Optimizer
    data: _Data
    frozen: FrozenOutputs
    locks: Locks
    device: str
    per_epoch: int
    total: int
    warmup: int
    history: list[dict[str, Any]]
    step: int = 0
    last_loss: float = float("nan")


def _loader(loop: _Loop, epoch: int) -> DataLoader[Any]:
    opts, dist = loop.opts, loop.opts.dist
    dataset: Dataset[Any] = (_IndexedPairs(loop.data.dataset.caption_ids) if loop.frozen.image is not None
                             else loop.data.dataset)
    sampler: Any
    if dist.world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, seed=opts.seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(opts.seed * 1000 + epoch))
    return DataLoader(dataset, batch_size=int(loop.r["batch_size"]), sampler=sampler, drop_last=True,
                      num_workers=opts.workers if loop.frozen.image is None else 0, persistent_workers=False)


def _micro_step(loop: _Loop, images: torch.Tensor, cap_ids: torch.Tensor) -> float:
    """Forward + backward of one micro-batch; returns its loss."""
    if loop.frozen.text is not None:
        text_in = cap_ids
    else:
        text_in = loop.data.tokens[cap_ids]
        if loop.locks.is_hf_text:  # HF towers mask padding: pad to the batch's longest
            text_in = text_in[:, : int((text_in != loop.data.pad).sum(1).max())]
    if loop.frozen.image is None:
        images = loop.data.train_transform.batch(images)
    autocast = torch.autocast(device_type="cuda" if loop.device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                              enabled=loop.r["precision"] == "bf16")
    with autocast:
        img, txt, scale = loop.step_module(images.to(loop.device), text_in.to(loop.device))
        loss = multi_positive_clip_loss(img.float(), txt.float(), cap_ids.to(loop.device), scale.float(),
                                        world_size=loop.opts.dist.world_size)
    (loss / loop.opts.accum_steps).backward()
    return float(loss.detach()) / loop.opts.accum_steps


def _run_epoch(loop: _Loop, epoch: int) -> None:
    """Up to ``per_epoch`` optimizer steps (fewer when the step budget ends first)."""
    opts, is_main = loop.opts, loop.opts.dist.rank == 0
    steps = min(loop.per_epoch, loop.total - loop.step)
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{loop.r['epochs']}", disable=not (opts.progress and is_main),
               leave=False)
    it = iter(_loader(loop, epoch))
    for _ in range(steps):
        factor = _lr_factor(loop.step, loop.warmup, loop.total)
        for group in loop.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        loop.optimizer.zero_grad(set_to_none=True)
        loss_sum = sum(_micro_step(loop, *next(it)) for _ in range(opts.accum_steps))
        loop.optimizer.step()
        with torch.no_grad():
            loop.model.logit_scale.clamp_(0, math.log(100))
        loop.step += 1
        loop.last_loss = loss_sum
        lr = float(loop.r["lr"]) * factor
        loop.history.append({"step": loop.step, "epoch": epoch, "loss": loss_sum, "lr": lr})
        bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}")
        bar.update(1)
    bar.close()


def _report(epoch: int, loss: float, metrics: dict[str, Any]) -> None:
    t2i, i2t = metrics["text_to_image"], metrics["image_to_text"]
    tqdm.write(f"epoch {epoch}: loss {loss:.3f}  val t->i R@10 {100 * t2i['R@10']:.1f}% "
               f"(chance {100 * t2i['chance_R@10']:.1f}%)  i->t R@10 {100 * i2t['R@10']:.1f}% "
               f"mean rank t->i {t2i['mean_rank']:.0f}")


def train(opts: TrainOptions) -> TrainResult:
    """Run one training (resuming from ``out_dir/checkpoints/last.pt`` when present). See the module doc."""
    t0 = time.time()
    device = _setup_process(opts)
    is_main, dist = opts.dist.rank == 0, opts.dist
    built, r = _build(opts)
    model = built.model.to(device)
    locks = apply_locks(model, r)
    if r["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    data = _load_data(opts, built, r)
    out = Path(opts.out_dir).expanduser().resolve()
    bf16 = r["precision"] == "bf16"
    frozen = _frozen_outputs(built, locks, [p.image for p in data.train_pairs], data.dataset.captions, device,
                             opts.feature_cache, bf16=bf16, progress=opts.progress and is_main, split="train")
    validator = None
    if data.val_pairs is not None and is_main:
        val_captions, _ = distinct_captions(data.val_pairs)
        validator = Validator(data.val_pairs, _frozen_outputs(
            built, locks, [p.image for p in data.val_pairs], val_captions, device, opts.feature_cache, bf16=bf16,
            progress=opts.progress, split="val"))
    step_module: nn.Module = _ClipStep(model, frozen)
    if dist.world_size > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[dist.local_rank] if device.startswith("cuda") else None)
    optimizer = _optimizer(model, r, opts)
    ckpt_path = out / "checkpoints" / "last.pt"
    per_epoch = max(len(data.dataset) // (int(r["batch_size"]) * dist.world_size) // opts.accum_steps, 1)
    total = int(r["epochs"]) * per_epoch if opts.max_steps is None else min(int(r["epochs"]) * per_epoch,
                                                                            int(opts.max_steps))
    loop = _Loop(opts=opts, r=r, model=model, step_module=step_module, optimizer=optimizer, data=data,
                 frozen=frozen, locks=locks, device=device, per_epoch=per_epoch, total=total,
                 warmup=min(int(r["warmup_steps"]), max(total // 5, 1)), history=[])
    epoch = 0
    if opts.resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, device)
        model.load_state_dict(ckpt["model"], strict=False)
        optimizer.load_state_dict(ckpt["optimizer"])
        loop.step, epoch, loop.history = int(ckpt["step"]), int(ckpt["epoch"]), list(ckpt["history"])
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_run_config(out, opts, built, r, data, device)

    def make_encoder() -> Encoder:
        return Encoder(model, image_transform_v2(built.preprocess_cfg, is_train=False), built.tokenizer,
                       model_id="training", device=device)

    val_metrics: dict[str, Any] | None = None
    set_train_mode(model, locks)
    while loop.step < total:
        _run_epoch(loop, epoch)
        epoch += 1
        if validator is not None and (epoch % max(opts.val_every_epochs, 1) == 0 or loop.step >= total):
            val_metrics = validator(model, make_encoder)
            loop.history.append({"step": loop.step, "epoch": epoch, "val": val_metrics})
            set_train_mode(model, locks)
            if opts.progress:
                _report(epoch, loop.last_loss, val_metrics)
        if is_main:
            save_checkpoint(ckpt_path, model, optimizer, {"step": loop.step, "epoch": epoch, "history": loop.history})
            atomic_json(loop.history, out / "history.json")
    if validator is not None and val_metrics is None:
        val_metrics = validator(model, make_encoder)
        loop.history.append({"step": loop.step, "epoch": epoch, "val": val_metrics})

    plot = export_dir = None
    if is_main:
        plot = plot_history(loop.history, out / "training_curves.png", title=f"{built.config.name} (seed {opts.seed})")
        atomic_json({"val": val_metrics, "steps": loop.step, "final_loss": loop.last_loss}, out / "metrics.json")
        if opts.export:
            export_dir = export_model(built, out / built.config.name,
                                      extra={"val": val_metrics, "steps": loop.step, "seed": opts.seed})
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.destroy_process_group()
    return TrainResult(out_dir=out, export_dir=export_dir, steps=loop.step, epochs_done=epoch,
                       final_loss=loop.last_loss, val=val_metrics, seconds=time.time() - t0, plot=plot)


def train_and_export(config_name: str, train_jsonl: str | Path, val_jsonl: str | Path | None, out_dir: str | Path,
                     *, epochs: int, batch_size: int, max_steps: int | None = None, seed: int = 0,
                     **overrides: Any) -> Path:
    """Train ``config_name`` through :func:`train` (the real entry point) and return the export folder.

    ``overrides`` are further :class:`TrainOptions` fields (e.g. ``lr``, ``lock_text``, ``progress``).
    """
    opts = TrainOptions(config=config_name, train_data=Path(train_jsonl),
                        val_data=Path(val_jsonl) if val_jsonl is not None else None, out_dir=Path(out_dir),
                        epochs=epochs, batch_size=batch_size, max_steps=max_steps, seed=seed, **overrides)
    result = train(opts)
    assert result.export_dir is not None
    return result.export_dir


def load_run_checkpoint(run_dir: str | Path) -> BuiltModel:
    """Rebuild a run's model from ``run_dir/config.json`` and load ``checkpoints/last.pt`` into it.

    Raises :class:`ConfigError` when the folder is not a training run.
    """
    run = Path(run_dir).expanduser()
    cfg_path, ckpt_path = run / "config.json", run / "checkpoints" / "last.pt"
    if not cfg_path.is_file() or not ckpt_path.is_file():
        raise ConfigError(f"{run} is not a training run (needs config.json and checkpoints/last.pt)")
    doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    o, r = doc["options"], doc["recipe"]
    config = load_config(o["config"])
    if r.get("patch_dropout"):
        config.model_cfg["vision_cfg"]["patch_dropout"] = float(r["patch_dropout"])
    built = build_model(config, pretrained_text=bool(o["pretrained_text"]),
                        pretrained_vision=bool(o.get("pretrained_vision", True)), text_dirs=o.get("text_dirs") or {},
                        tokenizer_dir=o.get("tokenizer_dir"), context_length=o.get("context_length"))
    built.config.recipe = dict(r)
    ckpt = load_checkpoint(ckpt_path)
    built.model.load_state_dict(ckpt["model"], strict=False)
    return built
