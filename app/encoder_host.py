"""The encoder host: the service's encoders, loaded once, shared, and run on one thread.

An :class:`EncoderHost` is created by the app (``create_app``'s lifespan) and held on its
services; nothing here is module state. It

- loads the CLIP encoder (``Settings.default_model_spec()``) and, when configured, the caption
  channel's sentence encoder (``Settings.text_model``); a failed load is recorded
  (``encoder_error`` / ``text_error``, shown by ``/readyz``) and retried at most every
  :data:`RETRY_LOAD_S` seconds;
- wraps each in a :class:`SharedEncoder` / :class:`SharedTextEncoder`, shared by the query threads
  and the in-process re-index worker, whose forward passes all run on the host's one encoder
  thread in slices of :data:`SLICE` items, so a query waits behind at most one slice of a re-index
  batch;
- keeps the text-embedding LRU cache (:class:`TextEmbeddingCache`, keyed by model id and text).

Why one thread: PyTorch's CPU kernels use an OpenMP team per calling thread whose workers keep
spinning for a while after each parallel region; passes started from several threads (query
threads, hybrid channels, the worker) make those teams fight over the cores. Measured on 2 cores: a
hybrid query whose CLIP and sentence encodes ran on two threads took 0.3-1.5 s instead of
0.02-0.06 s, even with the passes serialised by a lock. One thread: one team, and the passes queue
in order.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from app.config import Settings
from app.errors import NotReady
from app.metrics import Metrics, timed
from training.encoder_protocol import Encoder, TextEncoder, longest_first

log = logging.getLogger(__name__)

RETRY_LOAD_S = 30.0
"""A failed load is retried at most this often (seconds)."""

SLICE = 16
"""Items per forward pass of a shared encoder: a query waits behind at most one slice of a re-index
batch (about 0.1-0.3 s of the tiny encoder on 2 CPU cores), not the whole batch."""

EncoderLoader = Callable[[str, str], Encoder]
"""``(spec, device) -> encoder``: :func:`training.encoders.load_encoder` or a test's stand-in."""

_Item = TypeVar("_Item")


class RetryGate:
    """Says when a failed attempt may be made again: at once the first time, then at most every
    ``interval_s`` seconds (``force`` overrides)."""

    def __init__(self, interval_s: float = RETRY_LOAD_S) -> None:
        self.interval_s = interval_s
        self._last = 0.0

    def due(self, *, force: bool = False) -> bool:
        """True (and the attempt recorded) when an attempt may be made now."""
        now = time.monotonic()
        if not force and self._last and now - self._last < self.interval_s:
            return False
        self._last = now
        return True


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


class SharedTextEncoder:
    """A text encoder shared by query threads and the worker: same interface, float32 outputs, its
    forward passes run on ``thread`` in slices of at most :data:`SLICE` texts, cut in length order
    (each slice pads only to texts of similar length); results come back in the caller's order."""

    def __init__(self, inner: TextEncoder, thread: ThreadPoolExecutor) -> None:
        self.inner = inner
        self.model_id: str = inner.model_id
        self.dim: int = inner.dim
        self.device: str = str(getattr(inner, "device", "cpu"))
        self._thread = thread

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``inner.encode_texts`` as float32 ``[n, dim]``, slice by slice on the encoder thread."""
        order = longest_first(texts)
        vectors = self._sliced(lambda part: self.inner.encode_texts(part, batch_size=SLICE), [texts[i] for i in order])
        out = np.empty_like(vectors)
        out[np.asarray(order, dtype=np.int64)] = vectors
        return out

    def _sliced(self, encode: Callable[[list[_Item]], Any], items: list[_Item]) -> np.ndarray:
        parts = []
        for start in range(0, len(items), SLICE):
            part = items[start:start + SLICE]
            parts.append(np.asarray(self._thread.submit(encode, part).result(), dtype=np.float32))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


class SharedEncoder(SharedTextEncoder):
    """A CLIP encoder shared like :class:`SharedTextEncoder`, images included."""

    def __init__(self, inner: Encoder, thread: ThreadPoolExecutor) -> None:
        super().__init__(inner, thread)
        self.clip = inner

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """``inner.encode_images`` as float32 ``[n, dim]``, slice by slice on the encoder thread, in order."""
        return self._sliced(lambda part: self.clip.encode_images(part, batch_size=SLICE), list(images))


class EncoderHost:
    """The app's encoders (CLIP, and the optional sentence encoder), their one thread and the query cache."""

    def __init__(self, settings: Settings, metrics: Metrics, *, loader: EncoderLoader | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cache = TextEmbeddingCache(settings.query_cache_size)
        self._loader = loader
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._lock = threading.Lock()
        self._encoder: SharedEncoder | None = None
        self._text: SharedTextEncoder | None = None
        self._text_gate = RetryGate()
        self.encoder_error: str | None = None
        self.text_error: str | None = None

    # --- sharing ------------------------------------------------------------------------------------
    def share(self, inner: Encoder) -> SharedEncoder:
        """``inner`` wrapped to run its passes on this host's encoder thread."""
        return SharedEncoder(inner, self._thread)

    def share_text(self, inner: TextEncoder) -> SharedTextEncoder:
        """``inner`` (a text-only encoder) wrapped to run its passes on this host's encoder thread."""
        return SharedTextEncoder(inner, self._thread)

    # --- the CLIP encoder ---------------------------------------------------------------------------
    @property
    def loaded(self) -> SharedEncoder | None:
        """The CLIP encoder when it is loaded (no load is attempted), else None."""
        return self._encoder

    def load(self) -> SharedEncoder | None:
        """Try to load the CLIP encoder now unless it is loaded (the caller paces retries);
        a failure is recorded in ``encoder_error``, never raised."""
        with self._lock:
            if self._encoder is not None:
                return self._encoder
            spec = self.settings.default_model_spec()
            if spec is None:
                self.encoder_error = (
                    f"no encoder configured: set BIOMEDSEARCH_MODEL or export one under {self.settings.models_dir}"
                )
                return None
            loader = self._loader
            if loader is None:
                from training.encoders import load_encoder

                loader = functools.partial(load_encoder, precision=self.settings.encoder_precision)
            try:
                self._encoder = self.share(loader(spec, self.settings.device))
                self.encoder_error = None
                log.info("encoder %s loaded (dim %d)", self._encoder.model_id, self._encoder.dim)
            except Exception as exc:  # reported by /readyz; the service keeps answering
                self.encoder_error = f"could not load encoder {spec!r}: {exc}"
                log.error("%s", self.encoder_error)
            return self._encoder

    def require(self) -> SharedEncoder:
        """The loaded CLIP encoder; :class:`app.errors.NotReady` while there is none."""
        if self._encoder is None:
            raise NotReady(self.encoder_error or "the encoder is not loaded yet")
        return self._encoder

    # --- the caption channel's sentence encoder --------------------------------------------------------
    def text_encoder(self) -> SharedTextEncoder | None:
        """The sentence encoder of ``Settings.text_model``, loaded on first use (a failure is retried
        every :data:`RETRY_LOAD_S` s); None when none is configured or it failed (``text_error``)."""
        if not self.settings.text_model or self._text is not None:
            return self._text
        with self._lock:
            if self._text is None and self._text_gate.due():
                try:
                    from training.sentence_encoder import load_sentence_encoder

                    self._text = self.share_text(load_sentence_encoder(
                        self.settings.text_model, self.settings.device, self.settings.encoder_precision))
                    self.text_error = None
                except Exception as exc:  # the caption channel falls back to the CLIP caption index
                    self.text_error = (
                        f"could not load the caption-channel text model {self.settings.text_model!r}: {exc}"
                    )
                    log.error("%s", self.text_error)
        return self._text

    # --- encoding -----------------------------------------------------------------------------------
    def encode_text(self, encoder: SharedTextEncoder, text: str) -> np.ndarray:
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
        """The [1, dim] embedding of an image by the CLIP encoder (:class:`NotReady` without one)."""
        encoder = self.require()
        with timed(self.metrics.encode, "image"):
            return encoder.encode_images([image])

    def close(self) -> None:
        """Stop the encoder thread (at shutdown; queued passes are cancelled)."""
        self._thread.shutdown(wait=False, cancel_futures=True)
