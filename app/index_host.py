"""The live vector indexes the service searches, opened once a model id is known.

Two sets: the CLIP model's (``image`` and ``caption``, see :class:`indexer.publish.LiveIndexes`)
and, when the caption channel has its own sentence encoder, that encoder's ``caption`` index.
``refresh()`` follows newly published versions (in-flight searches finish on the old ones). A
failure to open or refresh is recorded in ``error`` (shown by ``/readyz``), never raised.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from app.config import Settings
from app.metrics import Metrics, timed
from indexer.vocabulary import VectorKind

if TYPE_CHECKING:
    from indexer.publish import LiveIndexes

log = logging.getLogger(__name__)

INDEX_KINDS: tuple[str, ...] = tuple(VectorKind)


class TimedSearcher:
    """Live indexes whose searches are timed into the ``index_search`` metric (what a dense channel searches)."""

    def __init__(self, indexes: LiveIndexes, metrics: Metrics) -> None:
        self.indexes = indexes
        self.metrics = metrics

    def search(self, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``indexes.search`` under the timer: (scores [q, k], figure ids [q, k], -1 where empty)."""
        with timed(self.metrics.index_search, kind):
            result: tuple[np.ndarray, np.ndarray] = self.indexes.search(kind, queries, k)
        return result


def _open(settings: Settings, model_id: str) -> LiveIndexes:
    from indexer.publish import LiveIndexes

    indexes = LiveIndexes(settings.index_dir, model_id, use_gpu=settings.use_gpu)
    indexes.refresh()
    return indexes


class IndexHost:
    """The CLIP model's live indexes (``clip``) and the caption channel's (``text``), once opened."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clip: LiveIndexes | None = None
        self.text: LiveIndexes | None = None
        self.error: str | None = None

    def open(self, model_id: str) -> None:
        """Open the CLIP model ``model_id``'s indexes (a failure goes to ``error``)."""
        try:
            self.clip = _open(self.settings, model_id)
            self.error = None
        except Exception as exc:
            self.error = f"could not open the indexes of {model_id}: {exc}"
            log.error("%s", self.error)

    def open_text(self, model_id: str) -> str | None:
        """Open the sentence encoder ``model_id``'s indexes; None, or why they could not be opened."""
        try:
            self.text = _open(self.settings, model_id)
        except Exception as exc:
            return f"could not open the caption-channel indexes of {model_id}: {exc}"
        return None

    def refresh(self) -> bool:
        """Switch to newly published versions (both sets); True if the CLIP model's switched."""
        if self.text is not None:
            try:
                self.text.refresh()
            except Exception as exc:  # the caption channel falls back; the CLIP indexes still refresh
                log.warning("caption-channel index refresh failed: %s", exc)
        if self.clip is None:
            return False
        try:
            changed = bool(self.clip.refresh())
            self.error = None
            return changed
        except Exception as exc:
            self.error = f"index refresh failed: {exc}"
            log.error("%s", self.error)
            return False

    def ntotal(self, kind: str, indexes: LiveIndexes | None = None) -> int:
        """Vectors in the live ``kind`` index of ``indexes`` (default: the CLIP set); 0 when none."""
        indexes = self.clip if indexes is None else indexes
        if indexes is None:
            return 0
        try:
            return int(indexes.ntotal(kind))
        except Exception as exc:
            if indexes is self.text:
                log.warning("caption-channel index unavailable: %s", exc)
            return 0

    def version(self, kind: str) -> int | None:
        """The live CLIP ``kind`` index version, or None."""
        if self.clip is None:
            return None
        try:
            v = self.clip.version(kind)
        except Exception:
            return None
        return None if v is None else int(v)

    def sizes(self) -> dict[str, int]:
        """Vectors per CLIP index kind (for ``/metrics`` and ``/readyz``)."""
        return {kind: self.ntotal(kind) for kind in INDEX_KINDS}

    def searcher(self, indexes: LiveIndexes) -> TimedSearcher:
        """``indexes`` with their searches timed."""
        return TimedSearcher(indexes, self.metrics)
