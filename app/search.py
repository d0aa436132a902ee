"""Query answering: the search service the routes call, composed of small parts.

- :class:`app.encoder_host.EncoderHost`: the encoders (loaded once, retried while they fail), their
  one encoder thread (slices of 16) and the text-embedding cache; owned by the app;
- :class:`app.index_host.IndexHost`: the live vector indexes, following new publications;
- :class:`app.channels.Channels`: the lexical, image and caption channels, run side by side and
  fused (:mod:`app.ranking`, weighted reciprocal rank fusion);
- :class:`app.pager.Pager`: over-fetching for filters, the catalogue join, the page, matched terms.

Text queries take a ``mode`` (:class:`indexer.vocabulary.SearchMode`, default
``Settings.search_mode``): ``dense`` is the CLIP image index alone; ``lexical`` the full-text index
over caption, mentions, title and label; ``hybrid`` fuses the lexical channel, the image channel
and a caption channel. Each fused hit carries which channels found it, at which rank, and the
matched terms per field. Image queries rank captions (``text``) or figure images (``image``).

Errors are domain errors (:mod:`app.errors`): ``NotReady`` without an encoder, ``NotFound`` for
an unknown figure, ``NotEmbedded`` for a figure without an image vector; the HTTP layer maps them.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.channels import ChannelRunner, Channels, dense_source
from app.config import Settings
from app.encoder_host import EncoderHost, RetryGate, SharedEncoder, SharedTextEncoder
from app.errors import BadQuery, NotEmbedded, NotFound
from app.index_host import IndexHost
from app.metrics import Metrics, timed
from app.pager import Page, Pager
from app.ranking import FusionWeights
from indexer.catalogue import Embedding, Figure
from indexer.filters import Filters
from indexer.vocabulary import ImageQueryMode, SearchMode, VectorKind

MAX_CANDIDATES = 20_000  # a fused query's over-fetching stops here


class SearchService:
    """What a query needs, composed: the app's encoder host, the live indexes, the channels, the pager."""

    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], metrics: Metrics, encoders: EncoderHost
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.encoders = encoders
        self.indexes = IndexHost(settings, metrics)
        self.channels = Channels(
            encoders, self.indexes, session_factory, metrics, FusionWeights.from_settings(settings),
            ChannelRunner(settings.parallel_channels),
        )
        self.pager = Pager(session_factory, metrics)
        self.session_factory = session_factory
        self._gate = RetryGate()
        self._lock = threading.Lock()

    # --- loading and state ----------------------------------------------------------------------------
    def load(self, *, force: bool = False) -> None:
        """Load the encoder and open its live indexes unless both are there; a failure is recorded
        (``encoder_error`` / ``index_error``) and retried at most every ``RETRY_LOAD_S`` s unless ``force``."""
        with self._lock:
            if self.encoders.loaded is not None and self.indexes.clip is not None:
                return
            if not self._gate.due(force=force):
                return
            encoder = self.encoders.load()
            if encoder is not None and self.indexes.clip is None:
                self.indexes.open(encoder.model_id)

    @property
    def encoder(self) -> SharedEncoder:
        """The loaded CLIP encoder (a load is tried first); :class:`app.errors.NotReady` while there is none."""
        if self.encoders.loaded is None:
            self.load()
        return self.encoders.require()

    @property
    def encoder_loaded(self) -> bool:
        """True once the encoder is loaded."""
        return self.encoders.loaded is not None

    @property
    def encoder_error(self) -> str | None:
        """Why the encoder is not loaded, or None."""
        return self.encoders.encoder_error

    @property
    def index_error(self) -> str | None:
        """Why the indexes could not be opened or refreshed, or None."""
        return self.indexes.error

    @property
    def text_error(self) -> str | None:
        """Why the caption channel's sentence encoder or its indexes are unavailable, or None."""
        return self.encoders.text_error or self.channels.text_index_error

    def text_encoder(self) -> SharedTextEncoder | None:
        """The caption channel's sentence encoder (``Settings.text_model``), loaded on first use; None
        when none is configured or it failed to load (``text_error`` says why)."""
        return self.encoders.text_encoder()

    def refresh(self) -> bool:
        """Follow newly published index versions; True if the CLIP model's switched."""
        if self.indexes.clip is None:
            self.indexes.refresh()  # the caption channel's, if open
            self.load()
            return False
        return self.indexes.refresh()

    def ntotal(self, kind: str) -> int:
        """Vectors in the live CLIP ``kind`` index (0 when nothing is published or loaded)."""
        return self.indexes.ntotal(kind)

    def version(self, kind: str) -> int | None:
        """The live CLIP ``kind`` index version, or None."""
        return self.indexes.version(kind)

    def index_sizes(self) -> dict[str, int]:
        """Vectors per index kind (for ``/metrics`` and ``/readyz``)."""
        return self.indexes.sizes()

    def readiness(self) -> tuple[bool, list[str]]:
        """(ready, reasons it is not): ready means encoder loaded and a non-empty image index."""
        self.load()
        reasons: list[str] = []
        encoder = self.encoders.loaded
        if encoder is None:
            reasons.append(self.encoders.encoder_error or "the encoder is not loaded yet")
        else:
            if self.indexes.error:
                reasons.append(self.indexes.error)
            if self.ntotal(VectorKind.IMAGE) == 0:
                reasons.append(f"no vectors indexed yet for model {encoder.model_id}")
        return not reasons, reasons

    def close(self) -> None:
        """Stop the channel threads (the encoder host is the app's to close)."""
        self.channels.runner.close()

    # --- queries -------------------------------------------------------------------------------------
    def search_text(
        self, text: str, k: int, offset: int, filters: Filters, mode: SearchMode | None = None,
        facets: tuple[str, ...] = (),
    ) -> Page:
        """Text -> figures in ``mode`` (default ``Settings.search_mode``; see the module docstring),
        with the ``facets`` counted over the query's candidates (:meth:`app.pager.Pager.page`)."""
        try:
            mode = SearchMode(mode or self.settings.search_mode)
        except ValueError:
            raise BadQuery(f"mode must be one of {', '.join(SearchMode)}") from None
        if mode is SearchMode.DENSE:
            query = self.encoders.encode_text(self.encoder, text)
            return self._vector_page(VectorKind.IMAGE, query, k, offset, filters, mode, facets=facets)
        if mode is SearchMode.HYBRID and self.encoders.loaded is None:
            self.load()
        channels = self.channels.for_mode(mode, filters)
        indexed = self.ntotal(VectorKind.IMAGE) if mode is SearchMode.HYBRID else self.pager.catalogue_size()
        page = self.pager.page(
            self.channels.fused_source(text, channels), k, offset, filters, total=MAX_CANDIDATES, indexed=indexed,
            version=self.version(VectorKind.IMAGE), channels=tuple(channels), mode=mode, facets=facets,
        )
        return replace(page, hits=self.pager.with_matched_terms(text, page.hits))

    def search_image(
        self, image: Image.Image, k: int, offset: int, mode: ImageQueryMode, filters: Filters,
        facets: tuple[str, ...] = (),
    ) -> Page:
        """Image -> text (``mode='text'``: nearest captions) or image -> image (``mode='image'``)."""
        if self.encoders.loaded is None:
            self.load()
        query = self.encoders.encode_image(image)
        kind = VectorKind.CAPTION if mode == ImageQueryMode.TEXT else VectorKind.IMAGE
        return self._vector_page(kind, query, k, offset, filters, str(mode), facets=facets)

    def similar(self, figure_id: int, k: int, offset: int, filters: Filters) -> Page:
        """Figures whose images are nearest figure ``figure_id``'s (itself excluded)."""
        model_id = self.encoder.model_id
        with timed(self.metrics.db, "embedding"), self.session_factory() as session:
            if session.get(Figure, figure_id) is None:
                raise NotFound(f"figure {figure_id} not found")
            blob = session.execute(
                select(Embedding.vector).where(
                    Embedding.figure_id == figure_id,
                    Embedding.model_id == model_id,
                    Embedding.kind == VectorKind.IMAGE,
                )
            ).scalar_one_or_none()
        if blob is None:
            raise NotEmbedded(
                f"figure {figure_id} has no image embedding for model {model_id} (no image, or not yet embedded)"
            )
        query = np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape(1, -1)
        return self._vector_page(VectorKind.IMAGE, query, k, offset, filters, str(ImageQueryMode.IMAGE), figure_id)

    def _vector_page(
        self, kind: VectorKind, query: np.ndarray, k: int, offset: int, filters: Filters, mode: str,
        exclude: int | None = None, facets: tuple[str, ...] = (),
    ) -> Page:
        """A page of the live ``kind`` index's nearest figures to the [1, dim] ``query``."""
        live = self.indexes.clip
        searcher = self.indexes.searcher(live) if live is not None else None
        source = dense_source(searcher, kind, query, lambda: self.ntotal(kind), exclude)
        size = self.ntotal(kind)
        return self.pager.page(
            source, k, offset, filters, total=size, indexed=size, version=self.version(kind),
            channels=(str(kind),), mode=mode, facets=facets,
        )
