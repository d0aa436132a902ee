"""Subcommand: ``biomedsearch demo`` (corpus -> encoder -> indexes -> serve, reusing what exists)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from app.cli.base import cli, console, fail, load_settings, setup_logging


@cli.command()
def demo(
    corpus: Annotated[
        Path | None,
        typer.Option(
            envvar="DEMO_CORPUS",
            help="Folder of articles to ingest (default: ../shared/data beside the working directory; "
            "without one, recent PMC OA packages are fetched).",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Encoder spec, e.g. local-dir:PATH (default: hub BiomedCLIP or train tiny).")
    ] = None,
    data_home: Annotated[Path | None, typer.Option(help="Data home (default: Settings.data_home, ./data).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default 8000).")] = None,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve when ready.")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Set up a searchable demo (ingest, encoder, indexes) and serve the UI and API."""
    from app.demo import DemoError, prepare
    from indexer.packages import PackageError
    from indexer.pipeline import ReindexError
    from training.errors import TrainingError

    setup_logging()
    settings = load_settings(data_home=data_home, model=model, host=host, port=port)
    started = time.perf_counter()
    try:
        result = prepare(settings, corpus, search_from=Path.cwd(), progress=progress)
    except (DemoError, PackageError, ReindexError, TrainingError) as exc:
        fail(str(exc))
    for line in result.steps:
        console.print(line)
    console.print(
        f"demo ready in {time.perf_counter() - started:.1f} s: model {result.model_spec}, "
        f"data home {settings.data_home}"
    )
    if not serve:
        return
    import uvicorn

    from app.main import create_app

    settings = settings.model_copy(update={"model": result.model_spec})
    console.print(f"open http://{settings.host}:{settings.port}/  (API docs at /docs)")
    try:
        encoder = result.encoder  # already loaded: the service does not load it a second time
        app = create_app(settings, encoder_loader=(lambda _spec, _device: encoder) if encoder is not None else None)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    except OSError as exc:
        fail(f"cannot serve on {settings.host}:{settings.port}: {exc}")
