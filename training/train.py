"""The training loop: BiomedCLIP's recipe on an open_clip model, on one CPU/GPU or many (torchrun/DDP).

Recipe knobs (``TrainOptions``; unset ones come from the config's ``recipe`` section): AdamW betas /
eps / weight decay, peak lr with linear warm-up and cosine decay, epochs, batch size, gradient
accumulation, bf16 autocast, gradient checkpointing, patch dropout (ViT towers), text-tower locking
(fully, or all but the last N layers) and a lower text-tower learning rate.

Each run writes into ``out_dir``: ``config.json`` (the resolved config and options),
``history.json`` + ``training_curves.png`` (loss and validation Recall@10), ``checkpoints/last.pt``
(resumable), ``metrics.json`` and the exported encoder ``<config name>/`` (an open_clip local-dir folder).

When the text tower is fully locked its pooled outputs cannot change, so they are computed once per
distinct caption and only the projection head runs per step (LiT-style; identical results, much
cheaper on a CPU).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transform import image_transform_v2
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from training.data import PairDataset, filter_pairs, read_pairs
from training.encoders import ClipEncoder as Encoder
from training.encoders import resolve_device
from training.errors import ConfigError, DataError
from training.evaluate import evaluate_retrieval
from training.export import export_model
from training.fsio import atomic_path, write_atomic
from training.losses import multi_positive_clip_loss
from training.model_factory import BuiltModel, build_model, load_config
from training.plots import plot_history
from training.preprocess import SplitTransform

RECIPE_DEFAULTS: dict[str, Any] = {
    "lr": 5e-4, "beta1": 0.9, "beta2": 0.98, "eps": 1e-6, "weight_decay": 0.2, "warmup_steps": 2000,
    "epochs": 32, "batch_size": 256, "precision": "bf16", "grad_checkpointing": False, "patch_dropout": 0.0,
    "lock_text": False, "lock_text_unlocked_layers": 0, "text_lr_scale": 1.0, "aug_scale_min": 0.9,
}


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
    aug_scale_min: float | None = None  # random-resized-crop keeps at least this share of the image (open_clip 0.9)
    pretrained_text: bool = True  # False: same text tower, random init (ablation)
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
    return resolved


def lock_hf_text_tower(text: nn.Module, unlocked_layers: int) -> None:
    """Freeze a Hugging Face text tower (LayerNorms included) except its last ``unlocked_layers`` layers.

    open_clip's ``HFTextEncoder.lock`` does this for ``unlocked_layers == 0`` only: for N > 0 it
    looks up a ``layer_attr`` that its ``arch_dict`` lacks for BERT (MiniLM, PubMedBERT) and raises
    ``KeyError``. Same semantics: embeddings + layers, all but the last N frozen; the projection
    head (``text.proj``) stays trainable.
    """
    transformer = text.transformer
    for p in transformer.parameters():
        p.requires_grad = False
    if unlocked_layers <= 0:
        return
    encoder = transformer.encoder if hasattr(transformer, "encoder") else transformer
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise ConfigError("partial text locking needs a BERT-style tower (encoder.layer)")
    if unlocked_layers > len(layers):
        raise ConfigError(f"lock_text_unlocked_layers {unlocked_layers} > the tower's {len(layers)} layers")
    for layer in list(layers)[-unlocked_layers:]:
        for p in layer.parameters():
            p.requires_grad = True


def _param_groups(model: nn.Module, lr: float, wd: float, text_lr: float) -> list[dict[str, Any]]:
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        is_text = name.startswith("text.") and not name.startswith("text.proj")
        groups.setdefault((no_decay, is_text), []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if nd else wd, "base_lr": text_lr if tx else lr}
            for (nd, tx), ps in groups.items()]


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class _ClipStep(nn.Module):
    """Forward of one training step (so DDP sees a single module): features + exp(logit_scale)."""

    def __init__(self, model: nn.Module, text_cache: torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.text_cache = text_cache

    def forward(self, pixels: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img = self.model.encode_image(pixels, normalize=True)
        if self.text_cache is not None:  # ``text`` holds caption indices into the frozen pooled outputs
            txt = F.normalize(self.model.text.proj(self.text_cache[text]), dim=-1)
        else:
            txt = self.model.encode_text(text, normalize=True)
        return img, txt, self.model.logit_scale.exp()


def _tokenize_all(built: BuiltModel, captions: list[str]) -> torch.Tensor:
    assert built.tokenizer is not None
    return torch.cat([built.tokenizer(captions[i:i + 256]) for i in range(0, len(captions), 256)])


def _frozen_text_cache(built: BuiltModel, tokens: torch.Tensor, device: str, progress: bool, *,
                       bf16: bool) -> torch.Tensor:
    """Pooled outputs of the frozen text tower for every caption (``[n, width]`` float32).

    Captions are batched in order of length (each batch padded only to its longest, so one long
    caption does not pad a batch of short ones to 256) and run under the training precision.
    """
    text = built.model.text
    text.eval()
    pad = int(built.tokenizer.tokenizer.pad_token_id or 0) if built.tokenizer is not None else 0
    order = torch.argsort((tokens != pad).sum(1), stable=True)
    out = torch.empty(0)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    with torch.inference_mode(), torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
        for i in tqdm(range(0, len(tokens), 128), desc="caching frozen text tower", disable=not progress):
            rows = order[i:i + 128]
            ids = tokens[rows]
            ids = ids[:, : int((ids != pad).sum(1).max())].to(device)
            mask = (ids != pad).long()
            pooled = text.pooler(text.transformer(input_ids=ids, attention_mask=mask), mask).float()
            if out.numel() == 0:
                out = torch.empty(len(tokens), pooled.shape[1], device=pooled.device)
            out[rows.to(pooled.device)] = pooled
    return out.clone()


class _LockedTexts:
    """Validation with a fully locked text tower: pooled outputs computed once (fp32, as the
    :class:`Encoder` computes them), only the trainable projection runs at each validation."""

    def __init__(self, model: nn.Module, captions: list[str], pooled: torch.Tensor) -> None:
        self.model = model
        self.index = {c: i for i, c in enumerate(captions)}
        self.pooled = pooled
        self.encoder: Encoder | None = None

    def bind(self, encoder: Encoder) -> _LockedTexts:
        """Use ``encoder`` for images (and for any text not cached)."""
        self.encoder = encoder
        return self

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Images through the bound encoder."""
        assert self.encoder is not None
        return self.encoder.encode_images(images, batch_size=batch_size)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Cached pooled outputs -> projection -> L2-normalised float32 ``[n, d]``."""
        assert self.encoder is not None
        if not all(t in self.index for t in texts):
            return self.encoder.encode_texts(texts, batch_size=batch_size)
        rows = torch.tensor([self.index[t] for t in texts], dtype=torch.long)
        with torch.inference_mode():
            feats = F.normalize(self.model.text.proj(self.pooled[rows.to(self.pooled.device)]), dim=-1)
        return feats.float().cpu().numpy()


def _atomic_json(obj: Any, path: Path) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str))


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    weights = {k: v for k, v in model.state_dict().items() if k in trainable or k not in dict(model.named_parameters())}
    with atomic_path(path) as tmp:
        torch.save({"model": weights, "optimizer": optimizer.state_dict(), **state}, tmp)


def train(opts: TrainOptions) -> TrainResult:
    """Run one training (resuming from ``out_dir/checkpoints/last.pt`` when present). See the module doc."""
    t0 = time.time()
    dist = opts.dist
    is_main = dist.rank == 0
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

    config = load_config(opts.config)
    r = _resolve(opts, config.recipe)
    if r["patch_dropout"]:
        config.model_cfg["vision_cfg"]["patch_dropout"] = float(r["patch_dropout"])
    built = build_model(config, pretrained_text=opts.pretrained_text, text_dirs=opts.text_dirs,
                        tokenizer_dir=opts.tokenizer_dir, context_length=opts.context_length)
    if built.tokenizer is None:
        raise ConfigError("the config names no tokenizer available on this host (hf_tokenizer_name)")
    built.config.recipe = dict(r)
    model = built.model.to(device)
    is_hf_text = hasattr(model.text, "pooler") and hasattr(model.text, "transformer")
    fully_locked = bool(r["lock_text"]) and int(r["lock_text_unlocked_layers"]) == 0 and is_hf_text
    if r["lock_text"]:
        if is_hf_text:
            lock_hf_text_tower(model.text, int(r["lock_text_unlocked_layers"]))
        else:
            raise ConfigError("lock_text needs a Hugging Face text tower (hf_model_name)")
    if r["grad_checkpointing"]:
        model.set_grad_checkpointing(True)

    pre = built.preprocess_cfg
    train_pairs, dropped = filter_pairs(read_pairs(opts.train_data), min_words=opts.min_caption_words)
    aug = {"scale": (float(r["aug_scale_min"]), 1.0)}
    train_transform = SplitTransform(image_transform_v2(pre, is_train=True, aug_cfg=aug))  # per image: uint8
    dataset = PairDataset(train_pairs, train_transform.pil)
    val_pairs = None
    if opts.val_data is not None:
        val_pairs, _ = filter_pairs(read_pairs(opts.val_data), min_words=opts.min_caption_words)
        if not val_pairs:
            raise DataError(f"no usable pairs in {opts.val_data}")
    tokens = _tokenize_all(built, dataset.captions)
    text_cache = (_frozen_text_cache(built, tokens, device, opts.progress and is_main, bf16=r["precision"] == "bf16")
                  if fully_locked else None)
    pad = int(built.tokenizer.tokenizer.pad_token_id or 0)

    step_module: nn.Module = _ClipStep(model, text_cache)
    if dist.world_size > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[dist.local_rank] if device.startswith("cuda") else None)
    text_lr = float(r["lr"]) * float(r["text_lr_scale"] if opts.pretrained_text else 1.0)
    groups = _param_groups(model, float(r["lr"]), float(r["weight_decay"]), text_lr)
    for group in groups:
        group["lr"] = group["base_lr"]
    optimizer = torch.optim.AdamW(groups,
                                  betas=(float(r["beta1"]), float(r["beta2"])), eps=float(r["eps"]))
    out = Path(opts.out_dir).expanduser().resolve()
    ckpt_path = out / "checkpoints" / "last.pt"
    history: list[dict[str, Any]] = []
    step, start_epoch = 0, 0
    if opts.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"], strict=False)
        optimizer.load_state_dict(ckpt["optimizer"])
        step, start_epoch, history = int(ckpt["step"]), int(ckpt["epoch"]), list(ckpt["history"])
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        resolved_opts = {k: v for k, v in asdict(opts).items() if k != "dist"}
        _atomic_json({"model": built.config.to_json(), "options": resolved_opts, "recipe": r,
                      "train_pairs": len(train_pairs), "dropped_captions": dropped,
                      "distinct_train_captions": len(dataset.captions), "world_size": dist.world_size,
                      "text_pretrained_loaded": built.text_loaded_pretrained, "device": device},
                     out / "config.json")

    micro_bs = int(r["batch_size"])
    per_epoch = max(len(dataset) // (micro_bs * dist.world_size) // opts.accum_steps, 1)
    total = int(r["epochs"]) * per_epoch
    if opts.max_steps is not None:
        total = min(total, int(opts.max_steps))
    warmup = min(int(r["warmup_steps"]), max(total // 5, 1))
    autocast = torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                              enabled=r["precision"] == "bf16")
    val_metrics: dict[str, Any] | None = None
    last_loss = float("nan")
    epoch = start_epoch

    val_text: _LockedTexts | None = None
    if val_pairs is not None and is_main and fully_locked:  # the frozen tower's val outputs never change
        val_captions = sorted({p.caption for p in val_pairs})
        val_text = _LockedTexts(model, val_captions, _frozen_text_cache(
            built, _tokenize_all(built, val_captions), device, False, bf16=False))

    def validate() -> dict[str, Any] | None:
        if val_pairs is None or not is_main:
            return None
        enc = Encoder(model, image_transform_v2(pre, is_train=False), built.tokenizer, model_id="training",
                      device=device)
        metrics = evaluate_retrieval(val_text.bind(enc) if val_text is not None else enc, val_pairs)
        model.train()
        if fully_locked:
            model.text.eval()
        history.append({"step": step, "epoch": epoch, "val": metrics})
        return metrics

    model.train()
    if fully_locked:
        model.text.eval()
    while step < total:
        generator = torch.Generator().manual_seed(opts.seed * 1000 + epoch)
        sampler: Any
        if dist.world_size > 1:
            sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, seed=opts.seed,
                                         drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(dataset, generator=generator)
        loader = DataLoader(dataset, batch_size=micro_bs, sampler=sampler, drop_last=True,
                            num_workers=opts.workers, persistent_workers=False)
        bar = tqdm(total=min(per_epoch, total - step), desc=f"epoch {epoch + 1}/{r['epochs']}",
                   disable=not (opts.progress and is_main), leave=False)
        it = iter(loader)
        for _ in range(min(per_epoch, total - step)):
            factor = _lr_factor(step, warmup, total)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for _micro in range(opts.accum_steps):
                pixels, cap_ids = next(it)
                text_in = cap_ids if text_cache is not None else tokens[cap_ids]
                if text_cache is None and is_hf_text:  # HF towers mask padding: pad to the batch's longest
                    text_in = text_in[:, : int((text_in != pad).sum(1).max())]
                with autocast:
                    img, txt, scale = step_module(train_transform.batch(pixels).to(device), text_in.to(device))
                    loss = multi_positive_clip_loss(img.float(), txt.float(), cap_ids.to(device), scale.float(),
                                                    world_size=dist.world_size)
                (loss / opts.accum_steps).backward()
                loss_sum += float(loss.detach()) / opts.accum_steps
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            last_loss = loss_sum
            history.append({"step": step, "epoch": epoch, "loss": loss_sum, "lr": float(r["lr"]) * factor})
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{float(r['lr']) * factor:.2e}")
            bar.update(1)
        bar.close()
        epoch += 1
        if val_pairs is not None and (epoch % max(opts.val_every_epochs, 1) == 0 or step >= total):
            val_metrics = validate()
            if val_metrics and opts.progress and is_main:
                t2i, i2t = val_metrics["text_to_image"], val_metrics["image_to_text"]
                tqdm.write(f"epoch {epoch}: loss {last_loss:.3f}  val t->i R@10 {100 * t2i['R@10']:.1f}% "
                           f"(chance {100 * t2i['chance_R@10']:.1f}%)  i->t R@10 {100 * i2t['R@10']:.1f}% "
                           f"mean rank t->i {t2i['mean_rank']:.0f}")
        if is_main:
            _save_checkpoint(ckpt_path, model, optimizer, {"step": step, "epoch": epoch, "history": history})
            _atomic_json(history, out / "history.json")
    if val_pairs is not None and val_metrics is None:
        val_metrics = validate()

    plot = export_dir = None
    if is_main:
        plot = plot_history(history, out / "training_curves.png", title=f"{config.name} (seed {opts.seed})")
        _atomic_json({"val": val_metrics, "steps": step, "final_loss": last_loss}, out / "metrics.json")
        if opts.export:
            export_dir = export_model(built, out / config.name, extra={"val": val_metrics, "steps": step,
                                                                   "seed": opts.seed})
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.destroy_process_group()
    return TrainResult(out_dir=out, export_dir=export_dir, steps=step, epochs_done=epoch, final_loss=last_loss,
                       val=val_metrics, seconds=time.time() - t0, plot=plot)


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
    built = build_model(config, pretrained_text=bool(o["pretrained_text"]), text_dirs=o.get("text_dirs") or {},
                        tokenizer_dir=o.get("tokenizer_dir"), context_length=o.get("context_length"))
    built.config.recipe = dict(r)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    built.model.load_state_dict(ckpt["model"], strict=False)
    return built
