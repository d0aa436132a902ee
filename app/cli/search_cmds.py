"""Subcommands: ``biomedsearch eval-search`` (the relevance benchmark: Recall@10, nDCG@10 and MRR
per ranking mode) and ``biomedsearch index-captions`` (caption vectors and index of the optional
sentence encoder, ``Settings.text_model``, for hybrid search's caption channel)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer
from rich.table import Table

from app.cli.base import cli, console, fail, load_settings, open_catalogue, setup_logging
from app.cli.index_cmds import _load_encoder, _load_text_model
from app.config import Settings
from app.ranking import ChannelSearch, FusionWeights, dense_channel, lexical_channel
from training.encoder_protocol import TextEncoder

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from indexer.publish import LiveIndexes


def _live(settings: Settings, model_id: str, kind: str) -> LiveIndexes:
    from indexer.publish import LiveIndexes

    live = LiveIndexes(settings.index_dir, model_id, use_gpu=settings.use_gpu)
    live.refresh()
    if live.ntotal(kind) == 0:
        hint = "biomedsearch index-captions" if model_id.startswith("sentence:") else "biomedsearch index"
        fail(f"no {kind} index published for {model_id} under {settings.index_dir}: run `{hint}` first")
    return live


def _encode_fn(encoder: TextEncoder) -> Callable[[str], np.ndarray]:
    @lru_cache(maxsize=4096)
    def encode(text: str) -> np.ndarray:
        return np.asarray(encoder.encode_texts([text]), dtype=np.float32)

    return encode


def build_channels(
    settings: Settings, session_factory: sessionmaker[Session], modes: set[str]
) -> dict[str, ChannelSearch]:
    """The benchmark's channels for ``modes`` from the configured encoder(s) and published indexes."""
    channels: dict[str, ChannelSearch] = {}
    if modes & {"lexical", "hybrid"}:
        channels["lexical"] = lexical_channel(session_factory)
    if modes & {"image", "caption", "hybrid"}:
        spec = settings.default_model_spec()
        if spec is None:
            fail(f"no encoder: set BIOMEDSEARCH_MODEL or export one under {settings.models_dir}")
        clip = _load_encoder(spec, settings.device, settings.encoder_precision)
        clip_encode = _encode_fn(clip)
        if modes & {"image", "hybrid"}:
            channels["image"] = dense_channel(clip_encode, _live(settings, clip.model_id, "image"), "image")
        if modes & {"caption", "hybrid"}:
            if settings.text_model:
                text = _load_text_model(settings)
                channels["caption"] = dense_channel(
                    _encode_fn(text), _live(settings, text.model_id, "caption"), "caption"
                )
            else:
                channels["caption"] = dense_channel(clip_encode, _live(settings, clip.model_id, "caption"), "caption")
    return channels


@cli.command("eval-search")
def eval_search_cmd(
    queries: list[Path] = typer.Option(
        ..., "--queries", help="Query set (JSONL: query + relevant judgements); repeatable."
    ),
    mode: list[str] = typer.Option(
        [], "--mode", help="lexical, image, caption or hybrid (repeatable; default: all)."
    ),
    k: int = typer.Option(10, "--k", min=1, max=1000, help="Cut-off for Recall / nDCG / MRR."),
    depth: int = typer.Option(100, "--depth", min=1, max=1000, help="Hits per channel fed to fusion."),
    tune: bool = typer.Option(
        False, "--tune", help="Also grid-search the fusion weights for the best worst-set hybrid nDCG."
    ),
    text_model: str | None = typer.Option(None, "--text-model", help="Caption-channel sentence encoder."),
    weight_lexical: float | None = typer.Option(None, "--weight-lexical", min=0),
    weight_image: float | None = typer.Option(None, "--weight-image", min=0),
    weight_caption: float | None = typer.Option(None, "--weight-caption", min=0),
    rrf_k: int | None = typer.Option(None, "--rrf-k", min=1),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Relevance benchmark: Recall@k, nDCG@k and MRR of each ranking mode on each query set."""
    from app.relevance import MODES, QuerySetError, evaluate, read_query_set, resolve, run_channels, tune_weights

    setup_logging(verbose)
    bad = [m for m in mode if m not in MODES]
    if bad:
        fail(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    modes = list(dict.fromkeys(mode)) or list(MODES)
    settings = load_settings(
        text_model=text_model, weight_lexical=weight_lexical, weight_image=weight_image,
        weight_caption=weight_caption, rrf_k=rrf_k,
    )
    raws = []
    for path in queries:
        try:
            raws.append((path, read_query_set(path)))
        except QuerySetError as exc:
            fail(str(exc))
    factory = open_catalogue(settings).session_factory
    channels = build_channels(settings, factory, set(modes))
    weights = FusionWeights.from_settings(settings)
    runs = []
    for path, raw in raws:
        judged, unresolved = resolve(factory, raw)
        if not judged:
            fail(f"none of the {len(raw)} queries of {path} have judged figures in {settings.shown_database_url}")
        results = run_channels(judged, channels, max(depth, k))
        runs.append((judged, results))
        report = evaluate(judged, results, weights, k=k, modes=modes, unresolved=unresolved)
        table = Table(title=f"{path.name}: {len(judged)} queries")
        for col in ("mode", f"Recall@{k}", f"nDCG@{k}", "MRR"):
            table.add_column(col, justify="left" if col == "mode" else "right")
        for name, sc in report.modes.items():
            table.add_row(name, f"{sc.recall:.3f}", f"{sc.ndcg:.3f}", f"{sc.mrr:.3f}")
        console.print(table)
        console.print(f"{path.name}: {report.summary()}")
    console.print(
        f"hybrid weights: lexical {weights.lexical}, image {weights.image}, caption {weights.caption}, "
        f"rrf_k {weights.rrf_k}; caption channel: {settings.text_model or 'CLIP text tower'}"
    )
    if tune and "hybrid" in modes:
        best, ndcgs = tune_weights(runs, k=k)
        per_set = ", ".join(f"{p.name} {n:.3f}" for (p, _), n in zip(raws, ndcgs, strict=True))
        console.print(
            f"tuned (best worst-set nDCG@{k}): lexical {best.lexical}, image {best.image}, "
            f"caption {best.caption}, rrf_k {best.rrf_k} -> hybrid nDCG@{k} {per_set}"
        )


@cli.command("index-captions")
def index_captions_cmd(
    text_model: str | None = typer.Option(None, "--text-model", help="`minilm` or a model folder."),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Embed every caption with the sentence encoder and publish its caption index."""
    from indexer.caption_embeddings import index_captions

    setup_logging(verbose)
    settings = load_settings(text_model=text_model)
    if not settings.text_model:
        fail("no sentence encoder: BIOMEDSEARCH_TEXT_MODEL is empty; pass --text-model minilm or a model folder")
    factory = open_catalogue(settings).session_factory
    encoder = _load_text_model(settings)
    report, index_report = index_captions(
        factory, encoder, settings.index_dir, options=settings.index_options(), batch_size=batch_size
    )
    console.print(report.summary())
    console.print(index_report.summary())
