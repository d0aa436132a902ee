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
from sqlalchemy.orm import Session, sessionmaker

from app.cli.base import cli, console, fail, load_settings, setup_logging
from app.config import Settings


def _session_factory(settings: Settings) -> sessionmaker[Session]:
    from indexer.catalogue import make_engine, make_session_factory, migrate

    url = settings.resolved_database_url
    try:
        migrate(url)
    except Exception as exc:  # any driver / connection failure: report it, no traceback
        fail(f"cannot open the catalogue at {url}: {exc}")
    return make_session_factory(make_engine(url))


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
    from indexer.embeddings import embed_pending
    from indexer.index_update import update_indexes

    dev = settings.device
    if world_size > 1 and dev in ("auto", "cuda"):
        import torch

        dev = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    factory = _session_factory(settings)
    encoder = _load_encoder(spec, dev, settings.encoder_precision)
    if not no_embed:
        report = embed_pending(
            factory,
            encoder,
            settings.data_home,
            batch_size=settings.encode_batch_size,
            workers=workers,
            rank=rank,
            world_size=world_size,
        )
        console.print(report.summary())
    if world_size > 1:
        import datetime as dt

        import torch.distributed as dist

        # gloo: a CPU barrier that works on every host; ranks wait for the slowest shard.
        dist.init_process_group("gloo", timeout=dt.timedelta(hours=12))
        dist.barrier()
        dist.destroy_process_group()
        if rank != 0:
            return
    options = settings.index_options(rebuild=rebuild)
    result = update_indexes(factory, settings.index_dir, encoder.model_id, options=options)
    console.print(result.summary())
    if settings.text_model:  # the caption channel's sentence encoder of hybrid search
        from indexer.caption_embeddings import index_captions

        text_encoder = _load_text_model(settings)
        captions, caption_index = index_captions(
            factory, text_encoder, settings.index_dir, options=options, batch_size=settings.encode_batch_size
        )
        console.print(captions.summary())
        console.print(caption_index.summary())


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

    factory = _session_factory(settings)
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
