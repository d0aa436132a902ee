"""`biomedsearch demo`: from a fresh checkout to a running search service in one command.

Steps, each skipped when its result already exists (so a second run is serving within seconds):

1. **Corpus**: the shared sample data beside the checkout (``../shared/data``: the JATS article
   packages, the XML-only articles and the MedPix image-caption manifests), a folder the user
   names, or, when neither exists, PMC OA packages fetched by PMCID.
2. **Encoder**: a spec the user names; else the published BiomedCLIP when it is in the local
   Hugging Face cache or the hub answers; else ``biomedclip-tiny`` trained on the corpus (MedPix
   train split when present, else the catalogue's own figure-caption pairs split by article) and
   exported to ``<data_home>/models/biomedclip-tiny``.
3. **Catalogue and indexes**: the re-index pipeline (:func:`indexer.pipeline.reindex`): ingest
   (idempotent), then, once the encoder is chosen, encode what is not yet encoded and publish the
   indexes (and the caption channel's, when ``text_model`` is set).

Serving is the caller's (the CLI runs uvicorn on the result).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from indexer.catalogue import open_database
from indexer.pairs_export import export_pairs
from training.fsio import replace_dir

if TYPE_CHECKING:
    from indexer.caption_embeddings import TextEncoder
    from training.encoders import Encoder

log = logging.getLogger(__name__)

BIOMEDCLIP_HUB = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
DEMO_MODEL_NAME = "biomedclip-tiny"
# A few hundred recent open-access articles are fetched when no local corpus exists.
FETCH_SINCE_DAYS = 3
FETCH_LIMIT = 300


class DemoError(Exception):
    """The demo cannot proceed (message says why and what to pass instead)."""


@dataclass
class Corpus:
    """What the demo ingests, and what it trains on when it has to train."""

    ingest: list[Path]
    train_jsonl: Path | None = None
    val_jsonl: Path | None = None
    description: str = ""


@dataclass
class DemoResult:
    """What the demo prepared: the encoder spec and one line per step."""

    model_spec: str
    steps: list[str] = field(default_factory=list)
    encoder: Encoder | None = None  # loaded while preparing: the service reuses it


def find_corpus(explicit: Path | None, search_from: Path) -> Corpus | None:
    """The corpus to ingest: ``explicit`` when given, else ``shared/data`` beside ``search_from``.

    A folder laid out like the shared data (``jats/``, ``medpix/``) is used part by part; any other
    folder is ingested as a whole (packages, JATS folders, ``.nxml`` and JSONL manifests in it).
    Returns None when there is no local corpus. Raises DemoError for an explicit path that is missing.
    """
    if explicit is not None:
        root = explicit.expanduser().resolve()
        if not root.exists():
            raise DemoError(f"corpus {root} does not exist")
    else:
        root = (search_from / ".." / "shared" / "data").resolve()
        if not root.is_dir():
            return None
    jats, medpix = root / "jats", root / "medpix"
    if not (jats.is_dir() or medpix.is_dir()):
        return Corpus(ingest=[root], description=str(root))
    ingest: list[Path] = []
    if (jats / "packages").is_dir():
        ingest += sorted((jats / "packages").glob("*.tar.gz"))
    if (jats / "xml-only").is_dir():
        ingest += sorted((jats / "xml-only").glob("*.nxml"))
    train = medpix / "train.jsonl" if (medpix / "train.jsonl").is_file() else None
    val = medpix / "val.jsonl" if (medpix / "val.jsonl").is_file() else None
    ingest += [p for p in (train, val) if p is not None]
    return Corpus(ingest=ingest, train_jsonl=train, val_jsonl=val, description=str(root))


def open_catalogue(settings: Settings) -> sessionmaker[Session]:
    """Migrate the catalogue of ``settings`` and return its session factory."""
    return open_database(settings.resolved_database_url).session_factory


def load_hub_model(device: str, precision: str = "auto") -> Encoder | None:
    """The published BiomedCLIP on ``device`` at ``precision`` when it is cached locally or the hub
    answers, else None."""
    from training.encoders import EncoderLoadError, load_encoder

    try:
        return load_encoder(BIOMEDCLIP_HUB, device=device, precision=precision)
    except EncoderLoadError as exc:
        log.info("published BiomedCLIP not available: %s", exc)
        return None


def _split_manifest(src: Path, train_out: Path, val_out: Path) -> None:
    """Split a pairs manifest by group (article) into train and validation manifests."""
    from training.data import read_pairs, split_by_group, write_pairs_jsonl

    train, val = split_by_group(read_pairs(src), 0.1, seed=0)
    write_pairs_jsonl(train, train_out)
    write_pairs_jsonl(val, val_out)


def train_demo_model(
    settings: Settings, corpus: Corpus | None, factory: sessionmaker[Session], *, progress: bool = True
) -> Path:
    """Train ``biomedclip-tiny`` (the best small-data recipe) and publish it under ``models/``.

    Trains on the corpus's MedPix train split (validated on its val split) when present, else on
    the catalogue's figure-caption pairs split by article. The export is copied into
    ``<models_dir>/biomedclip-tiny`` atomically. Returns that folder.
    """
    from training.train import TrainOptions, train

    runs = settings.data_home / "runs" / DEMO_MODEL_NAME
    runs.mkdir(parents=True, exist_ok=True)
    if corpus is not None and corpus.train_jsonl is not None:
        train_jsonl, val_jsonl = corpus.train_jsonl, corpus.val_jsonl
    else:
        pairs = runs / "catalogue-pairs.jsonl"
        if export_pairs(factory, settings.data_home, pairs) < 16:
            raise DemoError("the catalogue has too few figures with images to train an encoder on")
        train_jsonl, val_jsonl = runs / "train.jsonl", runs / "val.jsonl"
        _split_manifest(pairs, train_jsonl, val_jsonl)
    result = train(
        TrainOptions(
            config=DEMO_MODEL_NAME,
            train_data=train_jsonl,
            val_data=val_jsonl,
            out_dir=runs,
            device=settings.device,
            progress=progress,
        )
    )
    if result.export_dir is None:
        raise DemoError("training finished without an export")
    target = settings.models_dir / DEMO_MODEL_NAME
    publish_folder(result.export_dir, target)
    return target


def publish_folder(src: Path, target: Path) -> None:
    """Copy folder ``src`` to ``target`` so that ``target`` appears complete or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(src, staging, dirs_exist_ok=True)
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def choose_model(
    settings: Settings,
    corpus: Corpus | None,
    factory: sessionmaker[Session],
    *,
    hub_loader: Callable[[str, str], Encoder | None] = load_hub_model,
    progress: bool = True,
) -> tuple[str, str, Encoder | None]:
    """The encoder spec to index with, a line saying where it came from, and the encoder when
    choosing it already loaded it (the hub model), so it is not loaded twice."""
    if settings.model:
        return settings.model, f"encoder: {settings.model} (as configured)", None
    existing = settings.default_model_spec()
    if existing:
        return existing, f"encoder: {existing} (already exported)", None
    hub = hub_loader(settings.device, settings.encoder_precision)
    if hub is not None:
        return BIOMEDCLIP_HUB, f"encoder: {BIOMEDCLIP_HUB} (published weights)", hub
    folder = train_demo_model(settings, corpus, factory, progress=progress)
    return f"local-dir:{folder}", f"encoder: trained {DEMO_MODEL_NAME} -> {folder}", None


def fetch_corpus(settings: Settings, *, progress: bool = True) -> list[Path]:
    """Download up to ``FETCH_LIMIT`` article versions changed in the last ``FETCH_SINCE_DAYS``
    days from the PMC Cloud Service (no local corpus), through its newest inventory.

    Returns the article folders; versions that fail to download are logged and skipped.
    Raises DemoError when the service cannot be reached at all.
    """
    import datetime as dt

    from indexer.pmc_client import HttpOptions, PmcError
    from indexer.pmc_cloud import PmcCloud
    from indexer.pmc_fetch import fetch_inventory

    since = dt.date.today() - dt.timedelta(days=FETCH_SINCE_DAYS)
    options = HttpOptions(settings.pmc_requests_per_second, settings.pmc_retries, settings.pmc_timeout_s)
    try:
        with PmcCloud(base_url=settings.pmc_cloud_url, options=options) as cloud:
            report = fetch_inventory(
                cloud, None, settings.downloads_dir, since=since, limit=FETCH_LIMIT, progress=progress
            )
    except PmcError as exc:
        raise DemoError(
            f"no local corpus and the PMC Cloud Service is unreachable ({exc}); pass --corpus DIR with article packages"
        ) from exc
    for ident, message in report.errors:
        log.warning("not fetched: %s: %s", ident, message)
    return report.paths


def prepare(
    settings: Settings,
    corpus_dir: Path | None,
    *,
    search_from: Path,
    hub_loader: Callable[[str, str], Encoder | None] = load_hub_model,
    progress: bool = True,
) -> DemoResult:
    """Ingest the corpus, obtain an encoder and publish the indexes; return what was done."""
    from app.reindex import catalogue, reindex_options
    from indexer.pipeline import Encoders, reindex
    from training.encoders import load_encoder
    from training.fsio import private_dir

    private_dir(settings.data_home)
    factory = open_catalogue(settings)
    corpus = find_corpus(corpus_dir, search_from)
    paths: Sequence[Path] = corpus.ingest if corpus else fetch_corpus(settings, progress=progress)
    chosen: list[tuple[str, str, Encoder]] = []

    def encoder() -> Encoder:
        """Chosen once the corpus is ingested (training one, when needed, learns from it)."""
        spec, how, loaded = choose_model(settings, corpus, factory, hub_loader=hub_loader, progress=progress)
        if loaded is None:
            loaded = load_encoder(spec, device=settings.device, precision=settings.encoder_precision)
        chosen.append((spec, how, loaded))
        return chosen[0][2]

    def text_encoder() -> TextEncoder:
        from training.sentence_encoder import load_sentence_encoder

        return load_sentence_encoder(
            settings.text_model or "", device=settings.device, precision=settings.encoder_precision
        )

    encoders = Encoders(encoder, text_encoder if settings.text_model else None)
    options = reindex_options(settings, publish_images_first=False, progress=progress)  # one publication
    report = reindex(paths, catalogue(settings, factory), encoders, options)
    spec, how, loaded = chosen[0]
    lines = report.summaries()  # ingest, embed, indexes (, caption channel)
    steps = [f"corpus: {corpus.description if corpus else f'{len(paths)} packages fetched from PMC OA'}"]
    steps += [lines[0], how, *lines[1:]]
    return DemoResult(model_spec=spec, steps=steps, encoder=loaded)
