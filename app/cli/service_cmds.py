"""Subcommands: ``serve`` (the REST API under uvicorn) and ``worker`` (the re-index job loop alone)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from app.cli.base import cli, console, fail, load_settings, setup_logging


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
    from app.jobs import Worker, job_counts
    from indexer.catalogue import make_engine, make_session_factory, migrate
    from training.encoders import load_encoder

    setup_logging()
    settings = load_settings(data_home=data_home, model=model)
    url = settings.resolved_database_url
    try:
        migrate(url)
    except Exception as exc:
        fail(f"cannot open the catalogue at {url}: {exc}")
    engine = make_engine(url)
    factory = make_session_factory(engine)
    loaded: list[object] = []

    def encoder() -> object:
        if not loaded:
            spec = settings.default_model_spec()
            if spec is None:
                raise ValueError(
                    f"no encoder configured: set BIOMEDSEARCH_MODEL or export one under {settings.models_dir}"
                )
            loaded.append(load_encoder(spec, device=settings.device, precision=settings.encoder_precision))
        return loaded[0]

    text_loaded: list[object] = []

    def text_encoder() -> object:
        if not text_loaded:
            from training.sentence_encoder import load_sentence_encoder

            spec = settings.text_model or ""
            text_loaded.append(load_sentence_encoder(spec, settings.device, settings.encoder_precision))
        return text_loaded[0]

    loop = Worker(
        settings, factory, encoder, text_encoder_provider=text_encoder if settings.text_model else None, progress=True
    )
    console.print(f"worker {loop.worker_id} on {url}")

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
        engine.dispose()
    console.print(
        f"worker done: {ran if once else 'loop'} job(s) run; queue: "
        + ", ".join(f"{n} {state}" for state, n in counts.items())
    )
