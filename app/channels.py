"""The search channels: how each is built from the loaded encoders and live indexes, and how a
query's channels are run side by side.

- **Vector sources** (:func:`dense_source`): a query vector (an uploaded image's, or a figure's
  stored image vector) against the CLIP ``image`` or ``caption`` index, as a
  :data:`app.pager.CandidateSource`.
- **Text channels** (:meth:`Channels.for_mode`), each a :data:`app.ranking.ChannelSearch`:
  ``lexical`` (full-text search in the catalogue, the filters inside its SQL), ``image`` (the
  query's CLIP embedding against the image index) and ``caption`` (the sentence encoder's caption
  index when ``Settings.text_model`` is configured and published, else the CLIP caption index).
  ``dense`` mode is the image channel alone; ``hybrid`` uses the channels that are available now
  (without an encoder it is lexical search).
- **Fusion** (:meth:`Channels.fused_source`): the channels' hits fused by weighted RRF
  (:func:`app.ranking.fuse`), each candidate carrying its match.
- **Side by side** (:class:`ChannelRunner`): a hybrid query's channels run in threads; the lexical
  channel waits on the database while the dense channels encode (their passes queue on the encoder
  thread), so the full-text search hides behind the encoding (``Settings.parallel_channels``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.encoder_host import EncoderHost, RetryGate, SharedTextEncoder
from app.index_host import IndexHost, TimedSearcher
from app.metrics import REQUEST_PHASES, Metrics, timed
from app.pager import Candidate, CandidateSource
from app.ranking import CHANNELS, ChannelHit, ChannelSearch, FusionWeights, dense_channel, fuse
from indexer.filters import Filters
from indexer.lexical import search_lexical
from indexer.vocabulary import SearchMode

if TYPE_CHECKING:
    from indexer.publish import LiveIndexes


def dense_source(
    searcher: TimedSearcher | None, kind: str, query: np.ndarray, size: Callable[[], int], exclude: int | None = None
) -> CandidateSource:
    """A candidate source over ``searcher``'s ``kind`` index for the [1, dim] ``query`` (figure
    ``exclude`` left out); ``size()`` is the index's current vector count (empty: no candidates)."""

    def fetch(n: int) -> list[Candidate]:
        if searcher is None or n <= 0 or size() == 0:
            return []
        want = n + (1 if exclude is not None else 0)
        scores, ids = searcher.search(kind, query, want)
        out: list[Candidate] = []
        for score, fid in zip(np.asarray(scores)[0], np.asarray(ids)[0], strict=False):
            if fid < 0 or (exclude is not None and int(fid) == exclude):
                continue
            out.append(Candidate(int(fid), float(score)))
        return out[:n]

    return fetch


class ChannelRunner:
    """Runs a query's channels, side by side in threads when there are several and ``parallel``."""

    def __init__(self, parallel: bool) -> None:
        self.parallel = parallel
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(self, channels: dict[str, ChannelSearch], query: str, depth: int) -> dict[str, list[ChannelHit]]:
        """Each channel's best ``depth`` hits for ``query``. The request waited for the slowest
        channel, so its phases (encode, index search) are the ones added to the request's
        ``Server-Timing`` (not the sum)."""
        if len(channels) < 2 or not self.parallel:
            return {name: channel(query, depth) for name, channel in channels.items()}
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=2 * len(CHANNELS), thread_name_prefix="channel")
            pool = self._pool

        def run(channel: ChannelSearch) -> tuple[list[ChannelHit], dict[str, float]]:
            phases: dict[str, float] = {}  # this channel's encode / index_search seconds
            token = REQUEST_PHASES.set(phases)
            try:
                return channel(query, depth), phases
            finally:
                REQUEST_PHASES.reset(token)

        names = list(channels)
        # all but the last channel go to the pool; the last runs in this thread meanwhile
        futures = {name: pool.submit(run, channels[name]) for name in names[:-1]}
        here = run(channels[names[-1]])
        results: dict[str, list[ChannelHit]] = {}
        slowest: dict[str, float] = {}
        for name in names:
            results[name], phases = futures[name].result() if name in futures else here
            if sum(phases.values()) > sum(slowest.values()):
                slowest = phases
        request = REQUEST_PHASES.get()
        if request is not None:
            for phase, secs in slowest.items():
                request[phase] = request.get(phase, 0.0) + secs
        return results

    def close(self) -> None:
        """Stop the channel threads (at shutdown; a later query would start them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class Channels:
    """Builds a text query's channels from what is loaded now, and fuses them."""

    def __init__(
        self,
        encoders: EncoderHost,
        indexes: IndexHost,
        session_factory: sessionmaker[Session],
        metrics: Metrics,
        weights: FusionWeights,
        runner: ChannelRunner,
    ) -> None:
        self.encoders = encoders
        self.indexes = indexes
        self.session_factory = session_factory
        self.metrics = metrics
        self.weights = weights
        self.runner = runner
        self._text_gate = RetryGate()
        self.text_index_error: str | None = None

    def lexical(self, filters: Filters) -> ChannelSearch:
        """The full-text channel, ``filters`` applied inside its query."""
        where = None if filters.empty else filters

        def search(query: str, n: int) -> list[ChannelHit]:
            with timed(self.metrics.index_search, "lexical"), self.session_factory() as session:
                hits = search_lexical(session, query, n, where, marks=False)
            return [ChannelHit(h.figure_id, h.score) for h in hits]

        return search

    def dense(self, encoder: SharedTextEncoder, indexes: LiveIndexes, kind: str) -> ChannelSearch:
        """A text channel over ``indexes``' ``kind`` index, the query encoded (and cached) by ``encoder``."""
        return dense_channel(
            lambda query: self.encoders.encode_text(encoder, query), self.indexes.searcher(indexes), kind
        )

    def text_indexes(self, encoder: SharedTextEncoder) -> LiveIndexes | None:
        """The sentence encoder's live indexes, opened on first use (a failure is retried like a load)."""
        if self.indexes.text is None and self._text_gate.due():
            self.text_index_error = self.indexes.open_text(encoder.model_id)
        return self.indexes.text

    def caption(self) -> ChannelSearch | None:
        """The caption channel: the sentence encoder's caption index when configured and non-empty,
        else the CLIP caption index, else None."""
        text_encoder = self.encoders.text_encoder()
        if text_encoder is not None:
            text_indexes = self.text_indexes(text_encoder)
            if text_indexes is not None and self.indexes.ntotal("caption", text_indexes) > 0:
                return self.dense(text_encoder, text_indexes, "caption")
        clip = self.encoders.loaded
        if clip is not None and self.indexes.clip is not None and self.indexes.ntotal("caption") > 0:
            return self.dense(clip, self.indexes.clip, "caption")
        return None

    def for_mode(self, mode: SearchMode, filters: Filters) -> dict[str, ChannelSearch]:
        """The channels of a lexical or hybrid query that are available now (hybrid: lexical +
        image + caption, those with a positive weight). The CLIP encoder's load is the caller's."""
        weights = self.weights
        channels: dict[str, ChannelSearch] = {}
        if mode is SearchMode.LEXICAL or (mode is SearchMode.HYBRID and weights.lexical > 0):
            channels["lexical"] = self.lexical(filters)
        if mode is SearchMode.HYBRID:
            clip = self.encoders.loaded
            live = self.indexes.clip
            if clip is not None and live is not None and weights.image > 0 and self.indexes.ntotal("image") > 0:
                channels["image"] = self.dense(clip, live, "image")
            if weights.caption > 0:
                caption = self.caption()
                if caption is not None:
                    channels["caption"] = caption
        return channels

    def fused_source(self, query: str, channels: dict[str, ChannelSearch]) -> CandidateSource:
        """A candidate source fusing ``channels`` (weighted RRF, each channel run to ``max(n, 50)``);
        each candidate carries its match. The lexical channel alone ranks with weight 1."""
        weights = self.weights
        if set(channels) == {"lexical"}:
            weights = FusionWeights(lexical=1.0, image=0.0, caption=0.0, rrf_k=weights.rrf_k)

        def fetch(n: int) -> list[Candidate]:
            results = self.runner.run(channels, query, max(n, 50))
            return [Candidate(h.figure_id, h.score, h) for h in fuse(results, weights)[:n]]

        return fetch
