"""Query answering: encode the query, search a vector index, join the catalogue, page and filter.

The pipeline has three steps:

1. **Candidates.** A :data:`CandidateSource` maps ``n`` to the best ``n`` ``(figure_id, score)``
   pairs, best first. A dense source (:meth:`SearchService.dense_source`) searches the image index
   (text->image, image->image) or the caption index (image->text). Text queries take a ``mode``
   (default ``Settings.search_mode``): ``dense`` is the CLIP image index alone; ``lexical`` the
   full-text index over caption, mentions, title and label; ``hybrid`` fuses the lexical channel,
   the image channel and a caption channel (the sentence encoder ``Settings.text_model`` when one is
   configured and its caption index is published, else the CLIP caption index) by weighted
   reciprocal rank fusion (:mod:`app.ranking`). Each fused candidate carries which channels found
   it, at which rank, and the matched terms per field (for highlighting). Hybrid degrades to the
   channels that are available: without an encoder it is lexical search.
2. **Filters by over-fetching.** FAISS knows nothing of years, journals or licenses, so a filtered
   query asks its source for more candidates than the page needs (``max(4 * (offset + k), 50)``),
   joins them with the catalogue under the SQL filters, and, while the page is not yet full and
   the index holds more vectors, asks again for four times as many. Unfiltered queries fetch
   exactly ``offset + k``. The worst case (a filter matching almost nothing) scans the whole index,
   which is bounded by the index size and by ``offset + k <= 1000``.
3. **Join and page.** Candidates keep their order; figures that are no longer in the catalogue
   (deleted after the index version was built) are dropped; ranks are 1-based across pages.

Text query embeddings are kept in an LRU cache (``query_cache_size`` entries, keyed by model id
and text), so repeated queries skip the encoder.

The encoder is loaded once (at startup, then retried at most every ``RETRY_LOAD_S`` seconds while
it fails) and shared with the in-process worker; every forward pass runs on one encoder thread, in
slices of 16 items (:class:`SharedEncoder`), so a query waits behind at most one slice of a
re-index batch.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, load_only, sessionmaker

from app.config import Settings
from app.metrics import REQUEST_PHASES, Metrics, timed
from app.middleware import ApiError
from app.ranking import CHANNELS, ChannelHit, ChannelSearch, FusedHit, FusionWeights, dense_channel, fuse
from indexer.catalogue import Article, Embedding, Figure
from indexer.lexical import LexicalFilters, match_terms, search_lexical

log = logging.getLogger(__name__)

RETRY_LOAD_S = 30.0
INDEX_KINDS = ("image", "caption")
TEXT_MODES = ("hybrid", "dense", "lexical")
MAX_CANDIDATES = 20_000  # a filtered query's over-fetching stops here
CATALOGUE_COUNT_TTL_S = 1.0  # lexical answers' `indexed` may lag the catalogue by this much
# The columns a search hit carries (app.schemas.figure_fields / article_ref). The join loads only
# these: the JSON columns (mentions, extra) cost a decode per row and no answer shows them.
HIT_FIGURE_COLUMNS = (
    Figure.id, Figure.article_id, Figure.label, Figure.caption, Figure.caption_title, Figure.fig_id,
    Figure.position, Figure.width, Figure.height, Figure.image_path, Figure.thumb_path,
)
HIT_ARTICLE_COLUMNS = (
    Article.id, Article.pmcid, Article.doi, Article.pmid, Article.title, Article.journal, Article.year, Article.license,
)


@dataclass(frozen=True)
class Candidate:
    """One ranked candidate from a source: a figure id, its score (higher is better) and, for
    fused candidates, why it matched (:class:`app.ranking.FusedHit`)."""

    figure_id: int
    score: float
    match: FusedHit | None = None


CandidateSource = Callable[[int], list[Candidate]]
"""Given ``n``, the best ``n`` candidates (fewer when the source holds fewer), best first."""


@dataclass(frozen=True)
class Filters:
    """Catalogue filters: year range (inclusive), journal and license (case-insensitive equality)."""

    year_from: int | None = None
    year_to: int | None = None
    journal: str | None = None
    license: str | None = None

    @property
    def empty(self) -> bool:
        """True when no filter is set."""
        return self.year_from is None and self.year_to is None and not self.journal and not self.license


@dataclass(frozen=True)
class Hit:
    """A joined result: rank (1-based), score, the figure and its article, and (hybrid and lexical
    modes) why it matched."""

    rank: int
    score: float
    figure: Figure
    article: Article
    match: FusedHit | None = None


@dataclass(frozen=True)
class Page:
    """One page of hits plus what was searched (``mode`` and the ``channels`` that took part)."""

    hits: list[Hit]
    indexed: int
    index_version: int | None
    mode: str = "dense"
    channels: tuple[str, ...] = ()


class TextEmbeddingCache:
    """A thread-safe LRU map from (model id, text) to the text's embedding (read-only arrays)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        """The cached vector for ``key`` (and mark it recently used), or None."""
        with self._lock:
            vec = self._data.get(key)
            if vec is not None:
                self._data.move_to_end(key)
            return vec

    def put(self, key: tuple[str, str], vec: np.ndarray) -> None:
        """Remember ``vec`` for ``key``, evicting the least recently used entry when full."""
        if self.maxsize <= 0:
            return
        vec = np.array(vec, dtype=np.float32, copy=True)
        vec.setflags(write=False)
        with self._lock:
            self._data[key] = vec
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


_ENCODER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
"""Every forward pass of the service's encoders runs on this one thread. PyTorch's CPU kernels use
an OpenMP team per calling thread whose workers keep spinning for a while after each parallel
region; passes started from several threads (query threads, hybrid channels, the worker) make
those teams fight over the cores. Measured here on 2 cores: a hybrid query whose CLIP and sentence
encodes ran on two threads took 0.3-1.5 s instead of 0.02-0.06 s, even with the passes serialised
by a lock. One thread: one team, and the passes queue in order."""

SLICE = 16
"""Items per forward pass of a shared encoder: a query waits behind at most one slice of a re-index
batch (about 0.1-0.3 s of the tiny encoder on 2 CPU cores), not the whole batch."""


class SharedEncoder:
    """An encoder shared by the query threads and the in-process worker; same interface, float32
    outputs. Its forward passes run on the one encoder thread (:data:`_ENCODER_THREAD`), in slices
    of at most :data:`SLICE` items, so a query is never stuck behind a whole re-index batch.
    """

    def __init__(self, encoder: Any) -> None:
        self.inner = encoder
        self.model_id: str = encoder.model_id
        self.dim: int = encoder.dim
        self.device: str = getattr(encoder, "device", "cpu")

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``inner.encode_texts`` as float32, slice by slice on the encoder thread; the slices are
        cut from the texts in length order, so each pads only to texts of similar length."""
        from training.encoders import longest_first

        order = longest_first(texts)
        vectors = self._sliced(lambda part: self.inner.encode_texts(part, batch_size=SLICE), [texts[i] for i in order])
        out = np.empty_like(vectors)
        out[np.asarray(order, dtype=np.int64)] = vectors
        return out

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """``inner.encode_images`` as float32, slice by slice on the encoder thread."""
        return self._sliced(lambda part: self.inner.encode_images(part, batch_size=SLICE), list(images))

    def _sliced(self, encode: Callable[[list[Any]], Any], items: list[Any]) -> np.ndarray:
        parts = []
        for start in range(0, len(items), SLICE):
            part = items[start:start + SLICE]
            parts.append(np.asarray(_ENCODER_THREAD.submit(encode, part).result(), dtype=np.float32))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


class _TimedSearcher:
    """Live indexes whose searches are timed into the ``index_search`` metric (a dense channel's searcher)."""

    def __init__(self, indexes: Any, metrics: Metrics) -> None:
        self.indexes = indexes
        self.metrics = metrics

    def search(self, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``indexes.search`` under the timer."""
        with timed(self.metrics.index_search, kind):
            result: tuple[np.ndarray, np.ndarray] = self.indexes.search(kind, queries, k)
        return result


class SearchService:
    """Everything a query needs: the encoder, the live indexes, the catalogue, the cache."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        metrics: Metrics,
        *,
        encoder_loader: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.metrics = metrics
        self.cache = TextEmbeddingCache(settings.query_cache_size)
        self.weights = FusionWeights.from_settings(settings)
        self._encoder_loader = encoder_loader
        self._encoder: SharedEncoder | None = None
        self._indexes: Any = None  # indexer.publish.LiveIndexes once the model id is known
        self._load_lock = threading.Lock()
        self._last_attempt = 0.0
        self.encoder_error: str | None = None
        self.index_error: str | None = None
        # the caption channel's optional sentence encoder (Settings.text_model) and its indexes
        self._text_encoder: SharedEncoder | None = None
        self._text_indexes: Any = None
        self._text_attempt = 0.0
        self.text_error: str | None = None
        self._pool: ThreadPoolExecutor | None = None  # runs a hybrid query's channels side by side
        self._catalogue_count: tuple[float, int] | None = None  # (monotonic time, figures)

    # --- loading ------------------------------------------------------------------------------------
    def load(self, *, force: bool = False) -> None:
        """Load the encoder (from ``Settings.default_model_spec()``) and the live indexes.

        Failures are recorded in ``encoder_error`` / ``index_error`` (shown by ``/readyz``) rather
        than raised; a later call retries, at most every ``RETRY_LOAD_S`` seconds unless ``force``.
        """
        with self._load_lock:
            if self._encoder is not None and self._indexes is not None:
                return
            now = time.monotonic()
            if not force and self._last_attempt and now - self._last_attempt < RETRY_LOAD_S:
                return
            self._last_attempt = now
            if self._encoder is None:
                self._load_encoder()
            if self._encoder is not None and self._indexes is None:
                self._load_indexes(self._encoder.model_id)

    def _load_encoder(self) -> None:
        spec = self.settings.default_model_spec()
        if spec is None:
            self.encoder_error = (
                f"no encoder configured: set BIOMEDSEARCH_MODEL or export one under {self.settings.models_dir}"
            )
            return
        loader = self._encoder_loader
        if loader is None:
            from training.encoders import load_encoder

            loader = functools.partial(load_encoder, precision=self.settings.encoder_precision)
        try:
            self._encoder = SharedEncoder(loader(spec, self.settings.device))
            self.encoder_error = None
            log.info("encoder %s loaded (dim %d)", self._encoder.model_id, self._encoder.dim)
        except Exception as exc:  # reported by /readyz; the service keeps answering
            self.encoder_error = f"could not load encoder {spec!r}: {exc}"
            log.error("%s", self.encoder_error)

    def _load_indexes(self, model_id: str) -> None:
        from indexer.publish import LiveIndexes

        try:
            indexes = LiveIndexes(self.settings.index_dir, model_id, use_gpu=self.settings.use_gpu)
            indexes.refresh()
            self._indexes = indexes
            self.index_error = None
        except Exception as exc:
            self.index_error = f"could not open the indexes of {model_id}: {exc}"
            log.error("%s", self.index_error)

    @property
    def encoder(self) -> SharedEncoder:
        """The loaded encoder; raises a 503 :class:`ApiError` while there is none."""
        if self._encoder is None:
            self.load()
        if self._encoder is None:
            raise ApiError(503, self.encoder_error or "the encoder is not loaded yet")
        return self._encoder

    @property
    def encoder_loaded(self) -> bool:
        """True once the encoder is loaded."""
        return self._encoder is not None

    def refresh(self) -> bool:
        """Switch to newly published index versions if there are any (the CLIP model's, and the
        caption channel's sentence encoder's); True if the CLIP model's switched."""
        if self._text_indexes is not None:
            try:
                self._text_indexes.refresh()
            except Exception as exc:  # the caption channel falls back; the CLIP indexes still refresh
                log.warning("caption-channel index refresh failed: %s", exc)
        if self._indexes is None:
            self.load()
            return False
        try:
            changed = bool(self._indexes.refresh())
            self.index_error = None
            return changed
        except Exception as exc:
            self.index_error = f"index refresh failed: {exc}"
            log.error("%s", self.index_error)
            return False

    def ntotal(self, kind: str) -> int:
        """Vectors in the live ``kind`` index (0 when nothing is published or loaded)."""
        if self._indexes is None:
            return 0
        try:
            return int(self._indexes.ntotal(kind))
        except Exception:
            return 0

    def version(self, kind: str) -> int | None:
        """The live ``kind`` index version, or None."""
        if self._indexes is None:
            return None
        try:
            v = self._indexes.version(kind)
        except Exception:
            return None
        return None if v is None else int(v)

    def index_sizes(self) -> dict[str, int]:
        """Vectors per index kind (for ``/metrics`` and ``/readyz``)."""
        return {kind: self.ntotal(kind) for kind in INDEX_KINDS}

    def readiness(self) -> tuple[bool, list[str]]:
        """(ready, reasons it is not): ready means encoder loaded and a non-empty image index."""
        self.load()
        reasons: list[str] = []
        if self._encoder is None:
            reasons.append(self.encoder_error or "the encoder is not loaded yet")
        else:
            if self.index_error:
                reasons.append(self.index_error)
            if self.ntotal("image") == 0:
                reasons.append(f"no vectors indexed yet for model {self._encoder.model_id}")
        return not reasons, reasons

    # --- encoding -----------------------------------------------------------------------------------
    def encode_text(self, text: str) -> np.ndarray:
        """The [1, dim] embedding of ``text`` by the CLIP encoder (cached, see ``_encode_text_with``)."""
        return self._encode_text_with(self.encoder, text)

    def _encode_text_with(self, encoder: SharedEncoder, text: str) -> np.ndarray:
        """The [1, dim] embedding of ``text`` by ``encoder`` (from the LRU cache when it was asked before)."""
        key = (encoder.model_id, text)
        cached = self.cache.get(key)
        if cached is not None:
            self.metrics.query_cache.labels("hit").inc()
            return cached
        self.metrics.query_cache.labels("miss").inc()
        with timed(self.metrics.encode, "text"):
            vec = encoder.encode_texts([text])
        self.cache.put(key, vec)
        return vec

    def encode_image(self, image: Image.Image) -> np.ndarray:
        """The [1, dim] embedding of an image."""
        encoder = self.encoder
        with timed(self.metrics.encode, "image"):
            return encoder.encode_images([image])

    # --- candidates ----------------------------------------------------------------------------------
    def dense_source(self, kind: str, query: np.ndarray, exclude: int | None = None) -> CandidateSource:
        """A candidate source over the live ``kind`` index for the [1, dim] ``query``."""

        def fetch(n: int) -> list[Candidate]:
            if self._indexes is None or n <= 0 or self.ntotal(kind) == 0:
                return []
            want = n + (1 if exclude is not None else 0)
            with timed(self.metrics.index_search, kind):
                scores, ids = self._indexes.search(kind, query, want)
            out: list[Candidate] = []
            for score, fid in zip(np.asarray(scores)[0], np.asarray(ids)[0], strict=False):
                if fid < 0 or (exclude is not None and int(fid) == exclude):
                    continue
                out.append(Candidate(int(fid), float(score)))
            return out[:n]

        return fetch

    # --- hybrid channels ------------------------------------------------------------------------------
    def _load_text_encoder(self) -> None:
        """Load ``Settings.text_model`` and its caption indexes once (retried every RETRY_LOAD_S)."""
        if not self.settings.text_model or self._text_indexes is not None:
            return
        with self._load_lock:
            now = time.monotonic()
            if self._text_indexes is not None or (self._text_attempt and now - self._text_attempt < RETRY_LOAD_S):
                return
            self._text_attempt = now
            try:
                from indexer.publish import LiveIndexes
                from training.sentence_encoder import load_sentence_encoder

                encoder = SharedEncoder(load_sentence_encoder(
                    self.settings.text_model, self.settings.device, self.settings.encoder_precision))
                indexes = LiveIndexes(self.settings.index_dir, encoder.model_id, use_gpu=self.settings.use_gpu)
                indexes.refresh()
                self._text_encoder, self._text_indexes = encoder, indexes
                self.text_error = None
            except Exception as exc:  # the caption channel falls back to the CLIP caption index
                self.text_error = f"could not load the caption-channel text model {self.settings.text_model!r}: {exc}"
                log.error("%s", self.text_error)

    def text_encoder(self) -> SharedEncoder | None:
        """The caption channel's sentence encoder (``Settings.text_model``), loaded on first use; None
        when none is configured or it failed to load (``text_error`` says why)."""
        self._load_text_encoder()
        return self._text_encoder

    def _caption_channel(self) -> ChannelSearch | None:
        """The caption channel: the sentence encoder's caption index when configured and non-empty,
        else the CLIP caption index, else None."""
        self._load_text_encoder()
        if self._text_encoder is not None and self._text_indexes is not None:
            try:
                if int(self._text_indexes.ntotal("caption")) > 0:
                    return self._dense_channel(self._text_encoder, self._text_indexes, "caption")
            except Exception as exc:
                log.warning("caption-channel index unavailable: %s", exc)
        if self._encoder is not None and self.ntotal("caption") > 0:
            return self._dense_channel(self._encoder, self._indexes, "caption")
        return None

    def _dense_channel(self, encoder: SharedEncoder, indexes: Any, kind: str) -> ChannelSearch:
        """A text channel over ``indexes``' ``kind`` index, the query encoded (and cached) by ``encoder``."""
        searcher = _TimedSearcher(indexes, self.metrics)
        return dense_channel(lambda query: self._encode_text_with(encoder, query), searcher, kind)

    def _lexical_channel(self, filters: Filters) -> ChannelSearch:
        lexical_filters = None if filters.empty else LexicalFilters(
            filters.year_from, filters.year_to, filters.journal, filters.license
        )

        def search(query: str, n: int) -> list[ChannelHit]:
            with timed(self.metrics.index_search, "lexical"), self.session_factory() as session:
                hits = search_lexical(session, query, n, lexical_filters, marks=False)
            return [ChannelHit(h.figure_id, h.score) for h in hits]

        return search

    def text_channels(self, mode: str, filters: Filters) -> dict[str, ChannelSearch]:
        """The channels of ``mode`` that are available now (hybrid: lexical + image + caption).

        ``dense`` needs the encoder (503 without one); ``hybrid`` uses what is loaded.
        """
        weights = self.weights
        channels: dict[str, ChannelSearch] = {}
        if mode in ("hybrid", "lexical") and (mode == "lexical" or weights.lexical > 0):
            channels["lexical"] = self._lexical_channel(filters)
        if mode == "hybrid":
            if self._encoder is None:
                self.load()
            if self._encoder is not None and weights.image > 0 and self.ntotal("image") > 0:
                channels["image"] = self._dense_channel(self._encoder, self._indexes, "image")
            if weights.caption > 0:
                caption = self._caption_channel()
                if caption is not None:
                    channels["caption"] = caption
        return channels

    def fused_source(self, query: str, channels: dict[str, ChannelSearch]) -> CandidateSource:
        """A candidate source fusing ``channels`` (weighted RRF); each candidate carries its match."""
        weights = self.weights
        if set(channels) == {"lexical"}:
            weights = FusionWeights(lexical=1.0, image=0.0, caption=0.0, rrf_k=weights.rrf_k)

        def fetch(n: int) -> list[Candidate]:
            depth = max(n, 50)
            results = self._run_channels(channels, query, depth)
            return [Candidate(h.figure_id, h.score, h) for h in fuse(results, weights)[:n]]

        return fetch

    def _run_channels(
        self, channels: dict[str, ChannelSearch], query: str, depth: int
    ) -> dict[str, list[ChannelHit]]:
        """Each channel's best ``depth`` hits for ``query``, the channels run side by side.

        The lexical channel waits on the database while the dense channels encode (the CLIP text
        tower, then the sentence encoder: their forward passes queue on the encoder thread, see
        :class:`SharedEncoder`); none holds the GIL while it works, so the full-text search is
        hidden behind the encoding (``parallel_channels``).
        """
        if len(channels) < 2 or not self.settings.parallel_channels:
            return {name: channel(query, depth) for name, channel in channels.items()}
        if self._pool is None:
            with self._load_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=2 * len(CHANNELS), thread_name_prefix="channel")

        def run(channel: ChannelSearch) -> tuple[list[ChannelHit], dict[str, float]]:
            phases: dict[str, float] = {}  # this channel's encode / index_search seconds
            token = REQUEST_PHASES.set(phases)
            try:
                return channel(query, depth), phases
            finally:
                REQUEST_PHASES.reset(token)

        names = list(channels)
        # all but the last channel go to the pool; the last runs in this thread meanwhile
        futures = {name: self._pool.submit(run, channels[name]) for name in names[:-1]}
        here = run(channels[names[-1]])
        results: dict[str, list[ChannelHit]] = {}
        slowest: dict[str, float] = {}
        for name in names:
            results[name], phases = futures[name].result() if name in futures else here
            if sum(phases.values()) > sum(slowest.values()):
                slowest = phases
        # the request waited for the slowest channel: its phases are the request's (Server-Timing)
        request = REQUEST_PHASES.get()
        if request is not None:
            for phase, secs in slowest.items():
                request[phase] = request.get(phase, 0.0) + secs
        return results

    def close(self) -> None:
        """Stop the channel threads (at shutdown; a later hybrid query would start them again)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # --- queries -------------------------------------------------------------------------------------
    def search_text(self, text: str, k: int, offset: int, filters: Filters, mode: str | None = None) -> Page:
        """Text -> figures in ``mode`` (default ``Settings.search_mode``; see the module docstring)."""
        mode = mode or self.settings.search_mode
        if mode not in TEXT_MODES:
            raise ApiError(422, f"mode must be one of {', '.join(TEXT_MODES)}")
        if mode == "dense":
            query = self.encode_text(text)
            return self.page(self.dense_source("image", query), "image", k, offset, filters, channels=("image",))
        channels = self.text_channels(mode, filters)
        indexed = self.ntotal("image") if mode == "hybrid" else self.catalogue_size()
        page = self.page(
            self.fused_source(text, channels), "image", k, offset, filters,
            total=MAX_CANDIDATES, indexed=indexed, channels=tuple(channels),
        )
        return Page(self._with_matched_terms(text, page.hits), page.indexed, page.index_version, mode, page.channels)

    def _with_matched_terms(self, text: str, hits: list[Hit]) -> list[Hit]:
        """``hits`` with the query's matched words filled into each lexically matched hit's ``match``
        (the lexical channel ranks without them; only the page's hits need them)."""
        ids = [h.figure.id for h in hits if h.match is not None and "lexical" in h.match.ranks]
        if not ids:
            return hits
        with timed(self.metrics.index_search, "lexical"), self.session_factory() as session:
            found = match_terms(session, text, ids)
        out: list[Hit] = []
        for hit in hits:
            words = found.get(hit.figure.id)
            if hit.match is not None and words is not None:
                hit = replace(hit, match=replace(hit.match, terms=words[0], where=dict(words[1])))
            out.append(hit)
        return out

    def catalogue_size(self) -> int:
        """Figures in the catalogue (what lexical search covers), counted at most every
        ``CATALOGUE_COUNT_TTL_S`` seconds (a COUNT over 100k figures costs ~2 ms a query)."""
        now = time.monotonic()
        cached = self._catalogue_count
        if cached is not None and now - cached[0] < CATALOGUE_COUNT_TTL_S:
            return cached[1]
        with timed(self.metrics.db, "count"), self.session_factory() as session:
            count = int(session.execute(select(func.count(Figure.id))).scalar_one())
        self._catalogue_count = (now, count)
        return count

    def search_image(self, image: Image.Image, k: int, offset: int, mode: str, filters: Filters) -> Page:
        """Image -> text (``mode='text'``: nearest captions) or image -> image (``mode='image'``)."""
        query = self.encode_image(image)
        kind = "caption" if mode == "text" else "image"
        page = self.page(self.dense_source(kind, query), kind, k, offset, filters, channels=(kind,))
        return Page(page.hits, page.indexed, page.index_version, mode, page.channels)

    def similar(self, figure_id: int, k: int, offset: int, filters: Filters) -> Page:
        """Figures whose images are nearest figure ``figure_id``'s (itself excluded)."""
        model_id = self.encoder.model_id
        with timed(self.metrics.db, "embedding"), self.session_factory() as session:
            if session.get(Figure, figure_id) is None:
                raise ApiError(404, f"figure {figure_id} not found")
            blob = session.execute(
                select(Embedding.vector).where(
                    Embedding.figure_id == figure_id,
                    Embedding.model_id == model_id,
                    Embedding.kind == "image",
                )
            ).scalar_one_or_none()
        if blob is None:
            raise ApiError(
                409,
                f"figure {figure_id} has no image embedding for model {model_id} (no image, or not yet embedded)",
                code="not_embedded",
            )
        query = np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape(1, -1)
        page = self.page(
            self.dense_source("image", query, exclude=figure_id), "image", k, offset, filters, channels=("image",)
        )
        return Page(page.hits, page.indexed, page.index_version, "image", page.channels)

    def page(
        self,
        source: CandidateSource,
        kind: str,
        k: int,
        offset: int,
        filters: Filters,
        *,
        total: int | None = None,
        indexed: int | None = None,
        channels: tuple[str, ...] = (),
    ) -> Page:
        """Fetch candidates from ``source``, filter and join them, and cut the page ``[offset, offset+k)``.

        ``total`` bounds how many candidates the source can give (default: the ``kind`` index's
        size); ``indexed`` is what the page reports as searched (default: the same).
        """
        need = offset + k
        size = self.ntotal(kind)
        version = self.version(kind)
        total = size if total is None else total
        indexed = size if indexed is None else indexed
        if total == 0:
            return Page([], indexed, version, channels=channels)
        n = need if filters.empty else max(4 * need, 50)
        n = min(n, total)
        while True:
            candidates = source(n)
            joined = self.join(candidates, filters)
            if len(joined) >= need or n >= total or len(candidates) < n:
                break
            n = min(total, 4 * n)
        hits = [
            Hit(rank=i + 1, score=score, figure=fig, article=art, match=match)
            for i, (score, fig, art, match) in enumerate(joined[:need])
        ]
        return Page(hits[offset:], indexed, version, channels=channels)

    def join(
        self, candidates: list[Candidate], filters: Filters
    ) -> list[tuple[float, Figure, Article, FusedHit | None]]:
        """Candidates (in order, duplicates dropped) joined with their figure and article rows,
        keeping those that pass ``filters``. The rows are detached and carry only the columns a hit
        shows (:data:`HIT_FIGURE_COLUMNS`, :data:`HIT_ARTICLE_COLUMNS`)."""
        if not candidates:
            return []
        ids = list(dict.fromkeys(c.figure_id for c in candidates))
        stmt = (
            select(Figure, Article)
            .join(Article, Figure.article_id == Article.id)
            .where(Figure.id.in_(ids))
            .options(load_only(*HIT_FIGURE_COLUMNS), load_only(*HIT_ARTICLE_COLUMNS))
        )
        if filters.year_from is not None:
            stmt = stmt.where(Article.year >= filters.year_from)
        if filters.year_to is not None:
            stmt = stmt.where(Article.year <= filters.year_to)
        if filters.journal:
            stmt = stmt.where(func.lower(Article.journal) == filters.journal.strip().lower())
        if filters.license:
            stmt = stmt.where(func.lower(Article.license) == filters.license.strip().lower())
        with timed(self.metrics.db, "join"), self.session_factory() as session:
            rows = {fig.id: (fig, art) for fig, art in session.execute(stmt)}
        out: list[tuple[float, Figure, Article, FusedHit | None]] = []
        seen: set[int] = set()
        for c in candidates:
            if c.figure_id in rows and c.figure_id not in seen:
                seen.add(c.figure_id)
                fig, art = rows[c.figure_id]
                out.append((c.score, fig, art, c.match))
        return out


def decode_query_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an uploaded query image (size-checked, pixel-capped) to RGB; 4xx :class:`ApiError` if bad."""
    from indexer.images import ImageRejected, _open_checked, _to_rgb

    try:
        image = _open_checked(data, max_pixels=max_pixels)  # format and pixel cap from the header
        image.load()
        return _to_rgb(image)
    except ImageRejected as exc:
        raise ApiError(422, f"not a usable image: {exc}", code="bad_image") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(422, f"not a usable image: unreadable ({exc})", code="bad_image") from exc
