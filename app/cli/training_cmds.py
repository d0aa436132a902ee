"""Subcommands: ``train-tokenizer``, ``train``, ``export`` and ``eval`` (thin wrappers over ``training``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from app.cli.base import cli, console, fail, load_settings, open_catalogue, setup_logging
from training.fsio import write_atomic


def _write_json(obj: object, path: Path) -> None:
    write_atomic(path, json.dumps(obj, indent=2))


def _catalogue_manifest(out: Path) -> Path:
    """Export the catalogue's figure/caption pairs (figures with images) to a JSONL manifest."""
    from indexer.pairs_export import export_pairs

    settings = load_settings()
    with open_catalogue(settings, migrate=False) as db:
        if export_pairs(db.session_factory, settings.data_home, out) == 0:
            fail("the catalogue has no figures with images")
    return out


@cli.command("train-tokenizer")
def train_tokenizer_cmd(
    captions: Annotated[
        Path | None, typer.Option(help="JSONL (caption field), TSV (caption column) or text file.")
    ] = None,
    from_catalogue: Annotated[bool, typer.Option(help="Learn from the catalogue's captions.")] = False,
    out: Annotated[Path, typer.Option(help="Tokenizer folder to write.")] = Path("tokenizer"),
    vocab_size: Annotated[int, typer.Option(min=100, max=200_000)] = 30000,
    min_frequency: Annotated[int, typer.Option(min=1)] = 2,
    column: Annotated[str, typer.Option(help="Caption field / column name.")] = "caption",
    coverage_on: Annotated[Path | None, typer.Option(help="Caption file to report context coverage on.")] = None,
    context_lengths: Annotated[str, typer.Option(help="Comma-separated context lengths.")] = "77,256",
) -> None:
    """Learn an uncased WordPiece vocabulary from captions; report how many captions fit the context."""
    from training.errors import TrainingError
    from training.tokenizer import coverage, read_captions, train_wordpiece

    setup_logging()
    try:
        if from_catalogue:
            texts = read_captions(_catalogue_manifest(out.parent / f".{out.name}-captions.jsonl"))
        elif captions is not None:
            texts = read_captions(captions, column=column)
        else:
            fail("pass --captions FILE or --from-catalogue")
        lengths = [int(x) for x in context_lengths.split(",") if x.strip()]
        folder = train_wordpiece(texts, out, vocab_size=vocab_size, min_frequency=min_frequency)
        measured_on = read_captions(coverage_on, column=column) if coverage_on else texts
        report = [c.to_json() for c in coverage(folder, measured_on, lengths)]
    except (TrainingError, ValueError) as exc:
        fail(str(exc))
    _write_json({"measured_on": str(coverage_on or captions or "catalogue"), "coverage": report},
                folder / "coverage.json")
    for c in report:
        console.print(f"context {c['context_length']}: {100 * c['share']:.1f}% of {c['captions']} captions fit "
                      f"(median {c['median_tokens']:.0f} tokens, p90 {c['p90_tokens']:.0f})")
    console.print(f"tokenizer: {len(texts)} captions -> {folder}")


@cli.command("train")
def train_cmd(
    config: Annotated[
        str, typer.Option(help="Model config name (biomedclip-tiny, -tiny-lite1/-lite2, -tiny-resnet18, -small, "
                               "-base) or JSON path.")
    ] = "biomedclip-tiny",
    data: Annotated[str, typer.Option(help="Training pairs (JSONL) or 'catalogue'.")] = "catalogue",
    val: Annotated[Path | None, typer.Option(help="Held-out pairs (JSONL).")] = None,
    val_fraction: Annotated[
        float, typer.Option(help="With --data catalogue and no --val: held-out share, by article.")
    ] = 0.1,
    out: Annotated[Path, typer.Option(help="Run folder (checkpoints, curves, export).")] = Path("runs/biomedclip-tiny"),
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(min=2)] = None,
    accum_steps: Annotated[int, typer.Option(min=1)] = 1,
    lr: Annotated[float | None, typer.Option(min=0)] = None,
    beta1: Annotated[float | None, typer.Option()] = None,
    beta2: Annotated[float | None, typer.Option()] = None,
    eps: Annotated[float | None, typer.Option()] = None,
    weight_decay: Annotated[float | None, typer.Option(min=0)] = None,
    warmup_steps: Annotated[int | None, typer.Option(min=0)] = None,
    precision: Annotated[str | None, typer.Option(help="bf16 or fp32.")] = None,
    grad_checkpointing: Annotated[bool | None, typer.Option("--grad-checkpointing/--no-grad-checkpointing")] = None,
    patch_dropout: Annotated[float | None, typer.Option(min=0, max=0.95)] = None,
    lock_text: Annotated[bool | None, typer.Option("--lock-text/--unlock-text")] = None,
    unlocked_text_layers: Annotated[int | None, typer.Option(min=0)] = None,
    text_lr_scale: Annotated[float | None, typer.Option(min=0)] = None,
    lock_image: Annotated[bool | None, typer.Option("--lock-image/--unlock-image")] = None,
    unlocked_image_groups: Annotated[
        int | None, typer.Option(min=0, help="With --lock-image: train the image trunk's last N layer groups.")
    ] = None,
    image_lr_scale: Annotated[float | None, typer.Option(min=0, help="Image-trunk lr = lr * this.")] = None,
    scratch_vision: Annotated[
        bool, typer.Option(help="Random-init the image trunk instead of the config's pretrained weights (ablation).")
    ] = False,
    feature_cache: Annotated[
        Path | None,
        typer.Option(help="Folder for locked towers' cached outputs (default: feature-cache beside --out)."),
    ] = None,
    aug_scale_min: Annotated[
        float | None, typer.Option(min=0.05, max=1.0, help="Random-resized-crop: least share of the image kept.")
    ] = None,
    scratch_text: Annotated[bool, typer.Option(help="Random-init the text tower (ablation).")] = False,
    tokenizer: Annotated[Path | None, typer.Option(help="Tokenizer folder (from train-tokenizer).")] = None,
    context_length: Annotated[int | None, typer.Option(min=8, max=512)] = None,
    text_dir: Annotated[list[str] | None, typer.Option(help="HUB_ID=FOLDER: local copy of a text tower.")] = None,
    max_steps: Annotated[int | None, typer.Option(min=1)] = None,
    seed: int = 0,
    workers: Annotated[int, typer.Option(min=0)] = 0,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch CPU threads (default: torch's; 1 is fastest on a busy CPU).")
    ] = None,
    no_resume: bool = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N (default: settings).")] = None,
) -> None:
    """Train a BiomedCLIP-style encoder and export it (torchrun-aware: run under torchrun for DDP)."""
    from training.errors import TrainingError
    from training.train import DistInfo, TrainOptions, train

    setup_logging()
    settings = load_settings(device=device)
    text_dirs: dict[str, str] = {}
    for item in text_dir or []:
        name, sep, folder = item.partition("=")
        if not sep:
            fail(f"--text-dir expects HUB_ID=FOLDER, got {item!r}")
        text_dirs[name] = folder
    dist = DistInfo(rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    try:
        train_path = Path(data)
        val_path = val
        if data == "catalogue":
            from training.data import read_pairs, split_by_group, write_pairs_jsonl

            pairs_file = _catalogue_manifest(out / "catalogue-pairs.jsonl")
            if val_path is None:
                tr, va = split_by_group(read_pairs(pairs_file), val_fraction, seed=seed)
                train_path, val_path = out / "train.jsonl", out / "val.jsonl"
                write_pairs_jsonl(tr, train_path)
                write_pairs_jsonl(va, val_path)
            else:
                train_path = pairs_file
        cache_dir = feature_cache if feature_cache is not None else out.expanduser().resolve().parent / "feature-cache"
        opts = TrainOptions(
            config=config, train_data=train_path, val_data=val_path, out_dir=out, epochs=epochs,
            batch_size=batch_size, accum_steps=accum_steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
            weight_decay=weight_decay, warmup_steps=warmup_steps, precision=precision,
            grad_checkpointing=grad_checkpointing, patch_dropout=patch_dropout, lock_text=lock_text,
            lock_text_unlocked_layers=unlocked_text_layers, text_lr_scale=text_lr_scale,
            aug_scale_min=aug_scale_min, lock_image=lock_image, lock_image_unlocked_groups=unlocked_image_groups,
            image_lr_scale=image_lr_scale, pretrained_vision=not scratch_vision, feature_cache=cache_dir,
            pretrained_text=not scratch_text, tokenizer_dir=tokenizer, context_length=context_length,
            text_dirs=text_dirs, max_steps=max_steps, seed=seed, workers=workers, threads=threads,
            device=settings.device,
            resume=not no_resume, dist=dist,
        )
        result = train(opts)
    except TrainingError as exc:
        fail(str(exc))
    if dist.rank == 0:
        console.print(f"curves: {result.plot}")
        console.print(result.summary())


@cli.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option(help="Export folder (open_clip local-dir).")],
    run: Annotated[Path | None, typer.Option(help="A training run folder: export its last checkpoint.")] = None,
    config: Annotated[str | None, typer.Option(help="Without --run: export this config, randomly initialised.")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="Tokenizer folder (default: the config's).")] = None,
) -> None:
    """Export a trained run (or a randomly initialised config) as an open_clip local-dir folder."""
    from training.errors import TrainingError
    from training.export import export_model
    from training.model_factory import ModelConfig, build_model, load_config
    from training.train import load_run_checkpoint

    setup_logging()
    try:
        if run is not None:
            built = load_run_checkpoint(run)
        elif config is not None:
            cfg: ModelConfig = load_config(config)
            built = build_model(cfg, pretrained_text=False, tokenizer_dir=tokenizer)
        else:
            fail("pass --run RUN_DIR or --config NAME")
        folder = export_model(built, out)
    except TrainingError as exc:
        fail(str(exc))
    console.print(f"exported {built.config.name} -> {folder}")


@cli.command("eval")
def eval_cmd(
    model: Annotated[str | None, typer.Option(help="Encoder spec (default: settings).")] = None,
    data: Annotated[Path, typer.Option(help="Pairs (JSONL) to evaluate on.")] = Path("val.jsonl"),
    out: Annotated[Path | None, typer.Option(help="Write the metrics JSON here.")] = None,
    zero_shot: Annotated[bool, typer.Option(help="Also zero-shot classify images by --label-field.")] = False,
    label_field: Annotated[str, typer.Option(help="Field holding each image's class name.")] = "modality",
    group_modality: Annotated[
        bool, typer.Option(help="Group labels by modality ('CT - noncontrast' -> 'CT'; MedPix's modality field).")
    ] = True,
    min_class_size: Annotated[int, typer.Option(min=1)] = 5,
    device: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Retrieval Recall@1/5/10 and median rank both ways (and zero-shot accuracy) on a pairs file."""
    from PIL import Image

    from training.data import filter_pairs, read_pairs
    from training.encoders import load_encoder
    from training.errors import TrainingError
    from training.evaluate import evaluate_retrieval, modality_group, zero_shot_accuracy

    setup_logging()
    settings = load_settings(device=device, model=model)
    spec = settings.default_model_spec()
    if spec is None:
        fail("no model: pass --model SPEC (local-dir:PATH, a folder or hf-hub:NAME)")
    try:
        encoder = load_encoder(spec, device=settings.device, precision=settings.encoder_precision)
        pairs, dropped = filter_pairs(read_pairs(data))
        if not pairs:
            fail(f"no usable pairs in {data}")
        result = evaluate_retrieval(encoder, pairs)
        result.update(model=spec, model_id=encoder.model_id, data=str(data), dropped_captions=dropped)
        if zero_shot:
            with open(data, encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
            def class_of(row: dict[str, object]) -> str:
                value = str(row[label_field]).strip()
                return modality_group(value) if group_modality else value

            labelled = [r for r in rows if isinstance(r.get(label_field), str) and r[label_field].strip()]
            counts: dict[str, int] = {}
            for r in labelled:
                counts[class_of(r)] = counts.get(class_of(r), 0) + 1
            classes = sorted(c for c, n in counts.items() if n >= min_class_size)
            keep = [r for r in labelled if class_of(r) in classes]
            if len(classes) < 2:
                fail(f"zero-shot needs at least 2 classes of >= {min_class_size} images in field {label_field!r}")
            images = [Image.open(data.parent / r["image"]).convert("RGB") for r in keep]
            result["zero_shot"] = zero_shot_accuracy(encoder, images, [class_of(r) for r in keep], classes)
            result["zero_shot"].update(label_field=label_field, grouped_by_modality=group_modality)
    except (TrainingError, OSError) as exc:
        fail(str(exc))
    for key, label in (("text_to_image", "text->image"), ("image_to_text", "image->text")):
        m = result[key]
        console.print(f"{label}: R@1 {100 * m['R@1']:.1f}%  R@5 {100 * m['R@5']:.1f}%  R@10 {100 * m['R@10']:.1f}% "
                      f"(chance {100 * m['chance_R@10']:.1f}%)  median rank {m['median_rank']:.0f}  "
                      f"mean rank {m['mean_rank']:.0f} (chance {m['chance_mean_rank']:.0f})")
    if "zero_shot" in result:
        zs = result["zero_shot"]
        console.print(f"zero-shot ({len(zs['classes'])} classes of {label_field}, {zs['n']} images): accuracy "
                      f"{100 * zs['accuracy']:.1f}% (chance {100 * zs['chance']:.1f}%)")
        for name in zs["classes"]:
            console.print(f"  {name}: {100 * zs['per_class_accuracy'][name]:.1f}% of {zs['per_class_n'][name]} "
                          f"(chance {100 * zs['chance']:.1f}%)")
    if out is not None:
        _write_json(result, out)
    typer.echo(json.dumps({k: result[k] for k in ("text_to_image", "image_to_text")}, indent=2))
