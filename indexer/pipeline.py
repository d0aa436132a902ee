"""The one re-index pipeline: sources -> catalogue -> stored vectors -> published indexes.

:func:`reindex` runs the stages of :class:`indexer.vocabulary.Stage` in the order defined here, once,
for every caller: the job worker, ``biomedsearch index``, the demo and the benchmarks.

1. ``ingest``: the sources (packages, folders, ``.nxml``, JSONL manifests) into the catalogue;
2. ``embed``: the image vectors of every figure that lacks one;
3. ``label``: each figure's type for this encoder (zero-shot on its image vector + caption evidence)
   and its multi-panel flag (:mod:`indexer.labels`): so a figure is typed before search finds it, and
   a new encoder re-labels every figure;
4. ``publish``: the CLIP image and caption indexes: from here the new figures are found by text ->
   figure (image index and full text) and image -> figure search;
5. ``captions``: the CLIP caption vectors;
6. ``publish_captions``: the CLIP indexes again, now with the caption vectors (image -> caption);
7. ``caption_channel``: the sentence encoder of hybrid search's caption channel, when there is one:
   its caption vectors and caption index.

With ``publish_images_first`` off (a batch build: the demo, ``biomedsearch index``) ``embed`` stores
both kinds and ``publish`` runs once; stages 5 and 6 are then not needed. Every stage is idempotent
(the same article again is a no-op, only missing vectors are encoded and missing labels made,
publishing folds in only new vectors), so a pipeline that was killed simply runs again. The stages themselves live in
:mod:`indexer.pipeline_stages`; this module holds what a caller passes in and gets back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from indexer.embeddings import EmbedReport
from indexer.index_update import IndexOptions, IndexReport
from indexer.ingest import IngestLimits, IngestReport
from indexer.labels import LabelReport
from indexer.vocabulary import Stage
from training.encoder_protocol import Encoder, TextEncoder

# The order the stages run in (a stage a run does not need is passed over).
ORDER: tuple[Stage, ...] = (
    Stage.INGEST,
    Stage.EMBED,
    Stage.LABEL,
    Stage.PUBLISH,
    Stage.CAPTIONS,
    Stage.PUBLISH_CAPTIONS,
    Stage.CAPTION_CHANNEL,
)


class ReindexError(ValueError):
    """The pipeline cannot go on with what it was given (the message says why)."""


@dataclass(frozen=True)
class Catalogue:
    """Where the pipeline writes: the catalogue's sessions (migrated), the data home that holds its
    media, and the folder of its published indexes."""

    session_factory: sessionmaker[Session]
    data_home: Path
    index_dir: Path


@dataclass(frozen=True)
class Encoders:
    """How the pipeline gets its encoders, called when a stage first needs one (so a caller may load,
    or even train, the encoder only once ingestion is done).

    ``clip``: the CLIP model whose image and caption vectors and indexes are built. ``text``: the
    caption channel's sentence encoder, or None (returning None too: no caption channel)."""

    clip: Callable[[], Encoder]
    text: Callable[[], TextEncoder | None] | None = None


@dataclass(frozen=True)
class ReindexOptions:
    """How the stages run.

    limits: ingestion caps. index: how indexes are built. batch_size: figures per encoder batch.
    workers: image-loading threads. publish_images_first: publish the image vectors before encoding
    captions (a job: new figures searchable soonest) rather than once at the end (a batch build).
    require_articles: fail when no source yields an article. unpack: applied to each source before
    ingestion (a job unpacks zipped uploads there). skip: stages not to run. rank / world_size: this
    process's shard of the encoding; after ``embed`` every rank calls ``barrier`` (when given) and only
    rank 0 goes on to publish. progress: show progress bars.
    """

    limits: IngestLimits = field(default_factory=IngestLimits)
    index: IndexOptions = field(default_factory=IndexOptions)
    batch_size: int = 64
    workers: int = 2
    publish_images_first: bool = True
    require_articles: bool = False
    unpack: Callable[[Path], Path] | None = None
    skip: frozenset[Stage] = frozenset()
    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] | None = None
    progress: bool = True


@dataclass
class ReindexReport:
    """What a run did, stage by stage (filled in while it runs; a failed run keeps what it got to)."""

    ingest: IngestReport | None = None
    images: EmbedReport | None = None  # ``embed`` (both kinds when the images are not published first)
    captions: EmbedReport | None = None  # ``captions``
    labels: LabelReport | None = None  # ``label``
    publications: list[IndexReport] = field(default_factory=list)  # each ``publish`` / ``publish_captions``
    caption_channel: tuple[EmbedReport, IndexReport] | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage run (also a failed one)

    def summaries(self) -> list[str]:
        """One line per stage report, in the order the stages ran."""
        lines = [self.ingest.summary()] if self.ingest is not None else []
        lines += [r.summary() for r in (self.images, self.labels, self.captions) if r is not None]
        lines += [r.summary() for r in self.publications]
        if self.caption_channel is not None:
            lines += [r.summary() for r in self.caption_channel]
        return lines


# ``on_stage(stage, done, report)``: a stage has started (``done`` 0.0) or got ``done`` (0..1) of the way.
StageHook = Callable[[Stage, float, ReindexReport], None]


def reindex(
    sources: Sequence[Path] | None,
    catalogue: Catalogue,
    encoders: Encoders,
    options: ReindexOptions | None = None,
    on_stage: StageHook | None = None,
    *,
    on_published: Callable[[], None] | None = None,
) -> ReindexReport:
    """Run the pipeline (the module docstring) and return its report.

    ``sources`` None: no ingestion (index what the catalogue holds); an empty list is ingested (and
    fails with ``require_articles``). ``on_published`` is called after each publication (the service
    switches its live indexes there). Raises :class:`ReindexError` (and whatever a stage raises,
    ``report.seconds`` then holds the failed stage's time too).
    """
    from indexer import pipeline_stages

    opts = options or ReindexOptions()
    run = pipeline_stages.Run(sources, catalogue, encoders, opts, ReindexReport(), on_stage, on_published)
    for stage in ORDER:
        if run.wanted(stage):
            started = time.perf_counter()
            try:
                run.notify(stage, 0.0)
                pipeline_stages.STAGES[stage](run)
            finally:
                run.report.seconds[stage.value] = round(time.perf_counter() - started, 3)
        if stage is Stage.EMBED and opts.world_size > 1:
            if opts.barrier is not None:
                opts.barrier()  # every shard's vectors are stored before rank 0 publishes
            if opts.rank != 0:
                break
    return run.report
