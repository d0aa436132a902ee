"""Subcommands: ``serve`` (the REST API under uvicorn) and ``worker`` (the re-index job loop alone)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from app.cli.base import cli, console, fail, load_settings, open_catalogue, setup_logging


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default: Settings.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: Settings.port, 8000).")] = None,
    data_home: Annotated[Path | None, typer.Option(help="Data home (default: Settings.data_home).")] = None,
    model: Annotated[str | None, typer.Option(help="Encoder spec (default: newest export).")] = None,
    worker: Annotated[
        bool | None, typer.Option("--worker/--no-worker", help="Run the re-index worker in this process.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the search API (and, unless --no-worker, run re-index jobs in the same process)."""
    import uvicorn

    from app.main import create_app

    setup_logging()
    settings = load_settings(host=host, port=port, data_home=data_home, model=model, run_worker=worker)
    if log_level.lower() not in ("critical", "error", "warning", "info", "debug", "trace"):
        fail(f"unknown log level {log_level!r}")
    console.print(
        f"serving on http://{settings.host}:{settings.port} (data home {settings.data_home}, "
        f"worker {'on' if settings.run_worker else 'off'})"
    )
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level.lower())
    except OSError as exc:
        fail(f"cannot serve on {settings.host}:{settings.port}: {exc}")


@cli.command()
def worker(
    data_home: Annotated[Path | None, typer.Option(help="Data home (default: Settings.data_home).")] = None,
    model: Annotated[str | None, typer.Option(help="Encoder spec (default: newest export).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Run the queued jobs, then exit.")] = False,
) -> None:
    """Run re-index jobs from the job table (the same loop the API runs in-process)."""
    from app.jobs import LazyEncoder, Worker, job_counts
    from training.encoder_protocol import TextEncoder
    from training.encoders import load_encoder

    setup_logging()
    settings = load_settings(data_home=data_home, model=model)
    db = open_catalogue(settings)
    factory = db.session_factory
    encoder = LazyEncoder(
        settings.default_model_spec,
        lambda spec: load_encoder(spec, device=settings.device, precision=settings.encoder_precision),
        missing=f"no encoder configured: set BIOMEDSEARCH_MODEL or export one under {settings.models_dir}",
    )
    text_loaded: list[TextEncoder] = []

    def text_encoder() -> TextEncoder:
        if not text_loaded:
            from training.sentence_encoder import load_sentence_encoder

            spec = settings.text_model or ""
            text_loaded.append(load_sentence_encoder(spec, settings.device, settings.encoder_precision))
        return text_loaded[0]

    loop = Worker(
        settings,
        factory,
        encoder,
        encoder_ready=encoder.ready,
        text_encoder_provider=text_encoder if settings.text_model else None,
        progress=True,
    )
    console.print(f"worker {loop.worker_id} on {db.url}")

    def stop(_signum: int, _frame: FrameType | None) -> None:
        console.print("stopping after the current job")
        loop.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ran = 0
    try:
        if once:
            while not loop.stop_event.is_set() and loop.run_once() is not None:
                ran += 1
        else:
            loop.run_forever()
    finally:
        counts = job_counts(factory)
        db.dispose()
    console.print(
        f"worker done: {ran if once else 'loop'} job(s) run; queue: "
        + ", ".join(f"{n} {state}" for state, n in counts.items())
    )
    if loop.waiting:  # --once with jobs left queued for want of an encoder
        fail(loop.waiting, code=1)
