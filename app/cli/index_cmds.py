"""Subcommands: ``biomedsearch index`` (embed what is pending, update both indexes) and
``biomedsearch check`` (index vs catalogue vs stored embeddings, with ``--repair``).

Encoding a large catalogue on several GPUs or nodes: start the same command under ``torchrun``,
e.g. ``torchrun --nproc-per-node 8 --nnodes 2 ... -m app.cli index --model SPEC`` (or the
``biomedsearch`` script path). Each rank reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``, encodes
the figures whose id is its rank modulo the world size on ``cuda:LOCAL_RANK``, and writes into
the shared catalogue (PostgreSQL); after a barrier, rank 0 updates and publishes the indexes.
"""

from __future__ import annotations

from typing import Any

import typer
from sqlalchemy import select, union

from app.cli.base import cli, console, fail, load_settings, open_catalogue, setup_logging
from app.config import Settings


def _load_encoder(spec: str, device: str, precision: str = "auto") -> Any:
    try:
        from training.encoders import load_encoder
    except ImportError as exc:
        fail(f"the encoder package is not available: {exc}")
    try:
        return load_encoder(spec, device=device, precision=precision)
    except Exception as exc:  # a bad spec, missing files or an offline hub: one clear line
        fail(f"cannot load encoder {spec!r}: {exc}")


def _load_text_model(settings: Settings) -> Any:
    """The caption channel's sentence encoder (``settings.text_model``, which must be set); exits
    with one clear line when it cannot be loaded."""
    from training.sentence_encoder import load_sentence_encoder

    assert settings.text_model is not None
    try:
        return load_sentence_encoder(settings.text_model, device=settings.device, precision=settings.encoder_precision)
    except Exception as exc:
        fail(f"cannot load the caption-channel text model {settings.text_model!r}: {exc}")


@cli.command("index")
def index_cmd(
    model: str | None = typer.Option(None, "--model", help="Encoder spec (default: newest in models/)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Figures per batch."),
    workers: int = typer.Option(2, "--workers", min=1, help="Image-loading threads."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild the indexes from stored vectors."),
    no_embed: bool = typer.Option(False, "--no-embed", help="Only update the indexes."),
    rank: int = typer.Option(0, "--rank", envvar="RANK", min=0, help="This process's shard (torchrun)."),
    world_size: int = typer.Option(1, "--world-size", envvar="WORLD_SIZE", min=1, help="Shards in all."),
    local_rank: int = typer.Option(0, "--local-rank", envvar="LOCAL_RANK", min=0, help="GPU on this node."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Encode every figure image and caption not yet encoded for the model, then update and
    publish its image and caption indexes."""
    setup_logging(verbose)
    settings = load_settings(model=model, encode_batch_size=batch_size, device=device)
    spec = settings.default_model_spec()
    if spec is None:
        fail(f"no encoder: pass --model SPEC or export one under {settings.models_dir}")
    if rank >= world_size:
        fail(f"--rank {rank} must be below --world-size {world_size}")
    from app.reindex import catalogue, reindex_options
    from indexer.pipeline import Encoders, reindex
    from indexer.vocabulary import Stage

    dev = settings.device
    if world_size > 1 and dev in ("auto", "cuda"):
        import torch

        dev = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    factory = open_catalogue(settings).session_factory
    encoder = _load_encoder(spec, dev, settings.encoder_precision)
    options = reindex_options(
        settings,
        rebuild=rebuild,
        publish_images_first=False,  # a batch build: one publication once every vector is stored
        workers=workers,
        rank=rank,
        world_size=world_size,
        barrier=_barrier if world_size > 1 else None,
        skip=frozenset({Stage.EMBED}) if no_embed else frozenset(),
    )
    encoders = Encoders(lambda: encoder, (lambda: _load_text_model(settings)) if settings.text_model else None)
    report = reindex(None, catalogue(settings, factory), encoders, options)
    for line in report.summaries():
        console.print(line)


def _barrier() -> None:
    """Wait for every rank of a ``torchrun`` launch (gloo: a CPU barrier that works on every host)."""
    import datetime as dt

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=dt.timedelta(hours=12))
    dist.barrier()
    dist.destroy_process_group()


@cli.command("check")
def check_cmd(
    model: str | None = typer.Option(None, "--model", help="Only this encoder (default: every model)."),
    repair: bool = typer.Option(False, "--repair", help="Publish corrected indexes."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Compare each model's published indexes with the catalogue and the stored embeddings;
    exits 1 on a mismatch (unless ``--repair`` fixed it)."""
    setup_logging(verbose)
    settings = load_settings(model=model)
    from indexer.catalogue import Embedding, IndexVersion
    from indexer.index_update import check_indexes

    factory = open_catalogue(settings).session_factory
    if model is not None:
        model_ids = [_load_encoder(model, "cpu").model_id]
    else:
        with factory() as session:
            q = union(select(Embedding.model_id).distinct(), select(IndexVersion.model_id).distinct())
            model_ids = sorted(session.scalars(q).all())
    if not model_ids:
        console.print("nothing to check: no embeddings or indexes in the catalogue")
        return
    bad = False
    for model_id in model_ids:
        report = check_indexes(
            factory, settings.index_dir, model_id, repair=repair, options=settings.index_options()
        )
        console.print(f"[bold]{model_id}[/]\n{report.summary()}")
        repaired = all(
            c.ok or (c.repaired is not None and c.repaired.action != "empty") for c in report.kinds.values()
        )
        bad |= not report.ok and not (repair and repaired)
    if bad:
        raise typer.Exit(1)
