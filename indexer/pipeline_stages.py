"""The stages of :func:`indexer.pipeline.reindex`, one small function each, over one run's state.

Each stage calls the indexer function that does the work (:func:`indexer.ingest.ingest_paths`,
:func:`indexer.embeddings.embed_pending`, :func:`indexer.labels.label_pending`,
:func:`indexer.index_update.update_indexes`,
:func:`indexer.caption_embeddings.index_captions`) and records its report in the run's
:class:`indexer.pipeline.ReindexReport`. :meth:`Run.wanted` says which stages a run needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from indexer.caption_embeddings import TextEncoder, index_captions
from indexer.embeddings import KINDS, EmbedReport, Encoder, count_pending, embed_pending
from indexer.index_update import update_indexes
from indexer.ingest import ingest_paths
from indexer.labels import count_unlabelled, label_pending
from indexer.pipeline import Catalogue, Encoders, ReindexError, ReindexOptions, ReindexReport, StageHook
from indexer.vocabulary import Stage, VectorKind


class Run:
    """One pipeline run: its inputs, its report so far and the encoders once resolved."""

    def __init__(
        self,
        sources: Sequence[Path] | None,
        catalogue: Catalogue,
        encoders: Encoders,
        options: ReindexOptions,
        report: ReindexReport,
        on_stage: StageHook | None,
        on_published: Callable[[], None] | None,
    ) -> None:
        self.sources = None if sources is None else [Path(p) for p in sources]
        self.catalogue = catalogue
        self.encoders = encoders
        self.options = options
        self.report = report
        self._on_stage = on_stage
        self._on_published = on_published
        self._clip: Encoder | None = None
        self.text_encoder: TextEncoder | None = None

    @property
    def clip(self) -> Encoder:
        """The CLIP encoder (asked of ``encoders.clip`` once, when a stage first needs it)."""
        if self._clip is None:
            self._clip = self.encoders.clip()
        return self._clip

    def wanted(self, stage: Stage) -> bool:
        """Whether this run needs ``stage`` now (asked just before it would start)."""
        if stage in self.options.skip:
            return False
        if stage is Stage.INGEST:
            return self.sources is not None
        if stage is Stage.CAPTIONS:
            return self.options.publish_images_first
        if stage is Stage.PUBLISH_CAPTIONS:
            return self.report.captions is not None and self.report.captions.captions > 0
        if stage is Stage.CAPTION_CHANNEL:
            if self.encoders.text is not None and self.text_encoder is None:
                self.text_encoder = self.encoders.text()
            return self.text_encoder is not None
        return True

    def notify(self, stage: Stage, done: float) -> None:
        """Tell the caller's ``on_stage`` where the run is."""
        if self._on_stage is not None:
            self._on_stage(stage, done, self.report)

    def published(self) -> None:
        """A new index version is live: tell the caller's ``on_published``."""
        if self._on_published is not None:
            self._on_published()


def ingest(run: Run) -> None:
    """Stage ``ingest``: each source (passed through ``options.unpack``) into the catalogue."""
    opts, cat = run.options, run.catalogue
    assert run.sources is not None  # wanted() runs this stage only with sources
    paths = [opts.unpack(p) if opts.unpack is not None else p for p in run.sources]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ReindexError(f"source file(s) no longer exist: {', '.join(missing)}")
    report = ingest_paths(paths, cat.session_factory, cat.data_home, limits=opts.limits, progress=opts.progress)
    run.report.ingest = report
    if opts.require_articles and not any(a.status != "failed" for a in report.articles):
        reasons = "; ".join(f"{f.source}: {f.reason} {f.detail}".strip() for f in report.failed[:5])
        raise ReindexError(f"no article could be ingested from the package(s){': ' + reasons if reasons else ''}")


def _embed(run: Run, stage: Stage, kinds: Sequence[str]) -> EmbedReport:
    """Encode the missing ``kinds`` vectors of the CLIP encoder, reporting the share done."""
    opts, cat, encoder = run.options, run.catalogue, run.clip
    shard = {"rank": opts.rank, "world_size": opts.world_size}
    total = max(1, count_pending(cat.session_factory, encoder.model_id, kinds=kinds, **shard))
    return embed_pending(
        cat.session_factory,
        encoder,
        cat.data_home,
        batch_size=opts.batch_size,
        workers=opts.workers,
        progress=opts.progress,
        on_batch=lambda done: run.notify(stage, min(1.0, done / total)),
        kinds=kinds,
        **shard,
    )


def embed(run: Run) -> None:
    """Stage ``embed``: the image vectors (both kinds when the images are not published first)."""
    kinds = (VectorKind.IMAGE.value,) if run.options.publish_images_first else KINDS
    run.report.images = _embed(run, Stage.EMBED, kinds)


def captions(run: Run) -> None:
    """Stage ``captions``: the CLIP caption vectors."""
    run.report.captions = _embed(run, Stage.CAPTIONS, (VectorKind.CAPTION.value,))


def label(run: Run) -> None:
    """Stage ``label``: each figure's type for the CLIP encoder and its multi-panel flag."""
    opts, cat, encoder = run.options, run.catalogue, run.clip
    total = max(1, count_unlabelled(cat.session_factory, encoder.model_id))
    run.report.labels = label_pending(
        cat.session_factory,
        encoder,
        cat.data_home,
        batch_size=4 * opts.batch_size,
        workers=opts.workers,
        progress=opts.progress,
        on_batch=lambda done: run.notify(Stage.LABEL, min(1.0, done / total)),
    )


def publish(run: Run) -> None:
    """Stages ``publish`` and ``publish_captions``: the CLIP indexes up to date with the stored vectors."""
    opts, cat = run.options, run.catalogue
    report = update_indexes(
        cat.session_factory, cat.index_dir, run.clip.model_id, options=opts.index, progress=opts.progress
    )
    run.report.publications.append(report)
    run.published()


def caption_channel(run: Run) -> None:
    """Stage ``caption_channel``: the sentence encoder's caption vectors and caption index."""
    opts, cat = run.options, run.catalogue
    assert run.text_encoder is not None  # wanted() resolved it
    run.report.caption_channel = index_captions(
        cat.session_factory,
        run.text_encoder,
        cat.index_dir,
        options=opts.index,
        batch_size=opts.batch_size,
        progress=opts.progress,
    )
    run.published()


STAGES: dict[Stage, Callable[[Run], None]] = {
    Stage.INGEST: ingest,
    Stage.EMBED: embed,
    Stage.LABEL: label,
    Stage.PUBLISH: publish,
    Stage.CAPTIONS: captions,
    Stage.PUBLISH_CAPTIONS: publish,
    Stage.CAPTION_CHANNEL: caption_channel,
}
