"""Versioned, atomic publication of FAISS indexes, and the reader that follows it.

Layout, per model and kind (``image`` / ``caption``)::

    <index_dir>/<model slug>/<kind>/v0001.faiss   the index (written once, never modified)
                                   /v0001.json    its sidecar: what it holds (ids digest, params)
                                   /CURRENT       {"version": 1, ...}: the published version
    <index_dir>/<model slug>/.lock                held (flock) by the one writer

Publishing version N: write ``vN.faiss`` and ``vN.json`` to temporary names in the same
directory, fsync, rename into place, fsync the directory; record an ``IndexVersion`` row and
commit; then replace ``CURRENT`` (temp file + fsync + ``os.replace`` + directory fsync). A kill at
any moment leaves ``CURRENT`` naming a complete file whose row is in the catalogue; the
previous versions stay loadable until pruned (the newest ``keep`` are kept).

:class:`LiveIndexes` is what the service holds: ``refresh()`` reloads a kind when its pointer
moved and swaps the reference in one assignment, so searches in flight finish on the old index.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalogue import IndexVersion
from indexer.embeddings import KINDS
from indexer.vector_index import IndexFileError, VectorIndex, num_gpus, search_index, to_gpus
from training.fsio import file_sha256, fsync_dir, write_atomic

log = logging.getLogger(__name__)

POINTER = "CURRENT"


def model_slug(model_id: str) -> str:
    """A directory name for ``model_id``: its safe characters plus a short hash (unique, readable)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._")[:80] or "model"
    return f"{safe}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


def ids_digest(ids: np.ndarray) -> str:
    """sha256 of the sorted int64 figure ids (what an index version holds, in 64 hex chars)."""
    arr = np.sort(np.asarray(ids, dtype="<i8"))
    return hashlib.sha256(arr.tobytes()).hexdigest()


@dataclass(frozen=True)
class VersionMeta:
    """The sidecar of one index version (``vNNNN.json``)."""

    model_id: str
    kind: str
    version: int
    file: str
    index_type: str
    dim: int
    ntotal: int
    max_embedding_id: int
    ids_digest: str
    file_bytes: int
    file_sha256: str
    params: dict[str, Any]
    created_at: str

    def to_json(self) -> bytes:
        """The sidecar bytes."""
        return json.dumps(self.__dict__, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> VersionMeta:
        """Parse sidecar bytes (raises ValueError / KeyError / TypeError when malformed)."""
        return cls(**json.loads(data))


class IndexStore:
    """Where the versions of one model's indexes live, and how they are written and found."""

    def __init__(self, index_dir: Path, model_id: str) -> None:
        self.index_dir = Path(index_dir)
        self.model_id = model_id
        self.root = self.index_dir / model_slug(model_id)

    def kind_dir(self, kind: str) -> Path:
        """The directory of one kind's versions."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return self.root / kind

    def file_name(self, version: int) -> str:
        """``v0001.faiss`` for version 1."""
        return f"v{version:04d}.faiss"

    def read_pointer(self, kind: str) -> int | None:
        """The published version of ``kind`` (None before the first publication)."""
        try:
            data = json.loads((self.kind_dir(kind) / POINTER).read_bytes())
            return int(data["version"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFileError(f"unreadable pointer {self.kind_dir(kind) / POINTER}: {exc}") from exc

    def read_meta(self, kind: str, version: int) -> VersionMeta:
        """The sidecar of ``version``; IndexFileError when missing or malformed."""
        path = self.kind_dir(kind) / self.file_name(version).replace(".faiss", ".json")
        try:
            return VersionMeta.from_json(path.read_bytes())
        except FileNotFoundError as exc:
            raise IndexFileError(f"no sidecar {path}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFileError(f"malformed sidecar {path}: {exc}") from exc

    def versions_on_disk(self, kind: str) -> list[int]:
        """Version numbers with a complete file + sidecar, ascending."""
        out = []
        kdir = self.kind_dir(kind)
        if kdir.is_dir():
            for p in kdir.glob("v*.faiss"):
                m = re.fullmatch(r"v(\d+)\.faiss", p.name)
                if m and p.with_suffix(".json").is_file():
                    out.append(int(m.group(1)))
        return sorted(out)

    def load(self, kind: str, version: int, *, mmap: bool = False) -> tuple[VectorIndex, VersionMeta]:
        """Load one version (mmap read-only where FAISS allows) and check it against its sidecar."""
        meta = self.read_meta(kind, version)
        path = self.kind_dir(kind) / meta.file
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise IndexFileError(f"no index file {path}") from exc
        if size != meta.file_bytes:
            raise IndexFileError(f"{path} has {size} bytes, its sidecar says {meta.file_bytes}")
        vindex = VectorIndex.read(path, meta.params, mmap=mmap)
        if vindex.ntotal != meta.ntotal or vindex.dim != meta.dim:
            raise IndexFileError(f"{path} holds {vindex.ntotal}x{vindex.dim}, sidecar says {meta.ntotal}x{meta.dim}")
        return vindex, meta

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the model's exclusive writer lock (released by the OS if the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def next_version(self, session_factory: sessionmaker[Session], kind: str) -> int:
        """One past every version seen in the catalogue, on disk or in the pointer."""
        with session_factory() as session:
            in_db = session.scalar(
                select(func.max(IndexVersion.version)).where(
                    IndexVersion.model_id == self.model_id, IndexVersion.kind == kind
                )
            )
        seen = [int(in_db or 0), self.read_pointer(kind) or 0, *self.versions_on_disk(kind)]
        return max(seen) + 1

    def publish(
        self,
        session_factory: sessionmaker[Session],
        kind: str,
        vindex: VectorIndex,
        *,
        max_embedding_id: int,
        keep: int = 3,
        on_step: Any = None,
    ) -> VersionMeta:
        """Write ``vindex`` as the next version of ``kind``, record it, switch the pointer, prune.

        ``on_step(name)`` (tests use it to kill the process at each step) is called after each
        of ``written``, ``placed``, ``recorded``, ``switched``, ``pruned``. Call under
        :meth:`writer_lock`. Returns the new version's sidecar.
        """
        step = on_step or (lambda _name: None)
        kdir = self.kind_dir(kind)
        kdir.mkdir(parents=True, exist_ok=True)
        self._remove_temp_files(kdir)
        version = self.next_version(session_factory, kind)
        name = self.file_name(version)
        tmp = kdir / f".{name}.tmp-{os.getpid()}"
        vindex.write(tmp)
        held = vindex.ids()
        meta = VersionMeta(
            model_id=self.model_id,
            kind=kind,
            version=version,
            file=name,
            index_type=str(vindex.params.get("factory", vindex.shape)),
            dim=vindex.dim,
            ntotal=vindex.ntotal,
            max_embedding_id=int(max_embedding_id),
            ids_digest=ids_digest(held),
            file_bytes=tmp.stat().st_size,
            file_sha256=file_sha256(tmp),
            params=dict(vindex.params),
            created_at=dt.datetime.now(dt.UTC).isoformat(),
        )
        step("written")
        os.replace(tmp, kdir / name)
        write_atomic(kdir / name.replace(".faiss", ".json"), meta.to_json())  # fsyncs the directory
        step("placed")
        with session_factory.begin() as session:
            session.add(
                IndexVersion(
                    model_id=self.model_id,
                    kind=kind,
                    version=version,
                    path=str(Path(self.root.name) / kind / name),
                    index_type=meta.index_type,
                    ntotal=meta.ntotal,
                    max_embedding_id=meta.max_embedding_id,
                    ids_digest=meta.ids_digest,
                    params=meta.params,
                )
            )
        step("recorded")
        write_atomic(kdir / POINTER, json.dumps({"version": version, "file": name}).encode())
        step("switched")
        self.prune(kind, keep)
        step("pruned")
        return meta

    def prune(self, kind: str, keep: int) -> list[int]:
        """Delete the files of all but the newest ``keep`` versions (never the published one).

        Readers holding a pruned version keep working (the file stays alive while mapped/open).
        Catalogue rows are history and stay. Returns the versions removed.
        """
        current = self.read_pointer(kind)
        versions = self.versions_on_disk(kind)
        doomed = [v for v in versions[: max(0, len(versions) - max(keep, 1))] if v != current]
        kdir = self.kind_dir(kind)
        for v in doomed:
            name = self.file_name(v)
            (kdir / name.replace(".faiss", ".json")).unlink(missing_ok=True)
            (kdir / name).unlink(missing_ok=True)
        if doomed:
            fsync_dir(kdir)
        return doomed

    @staticmethod
    def _remove_temp_files(kdir: Path) -> None:
        """Remove temp files a killed writer left (only the lock holder calls this)."""
        for p in kdir.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Loaded:
    version: int
    meta: VersionMeta
    vindex: VectorIndex
    searcher: faiss.Index  # the CPU index, or its GPU clone


class LiveIndexes:
    """The published indexes of one model, reloaded when the pointer moves (no restart).

    ``mmap`` loads IVF indexes memory-mapped and read-only; ``use_gpu`` shards them over all GPUs
    when faiss-gpu sees any. Thread-safe: ``search`` reads one reference; ``refresh`` builds the
    new index completely before swapping that reference.
    """

    def __init__(self, index_dir: Path, model_id: str, *, use_gpu: bool = False, mmap: bool = True) -> None:
        self.store = IndexStore(index_dir, model_id)
        self.model_id = model_id
        self.gpu = bool(use_gpu) and num_gpus() > 0
        self.mmap = mmap and not self.gpu
        self._loaded: dict[str, _Loaded] = {}
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Load every kind whose published version differs from the one held; True when any did.

        A version that cannot be loaded (e.g. pruned between reading the pointer and opening it)
        is retried once with the pointer re-read, then logged and skipped: the old one stays.
        """
        with self._lock:
            loaded = dict(self._loaded)
            changed = False
            for kind in KINDS:
                for attempt in (0, 1):
                    try:
                        version = self.store.read_pointer(kind)
                        if version is None or (kind in loaded and loaded[kind].version == version):
                            break
                        vindex, meta = self.store.load(kind, version, mmap=self.mmap)
                    except IndexFileError as exc:
                        if attempt:
                            log.warning("%s/%s: keeping the loaded index: %s", self.model_id, kind, exc)
                        continue
                    searcher = to_gpus(vindex.index) if self.gpu else vindex.index
                    loaded[kind] = _Loaded(version, meta, vindex, searcher)
                    changed = True
                    break
            self._loaded = loaded  # one reference swap: in-flight searches keep the old dict
            return changed

    def search(self, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of ``queries`` [q, dim] in the ``kind`` index: (scores [q, k], figure ids [q, k]).

        Positions without a result hold id -1 and score -inf; before the first publication every
        position is empty. Raises DimensionMismatchError on queries of the wrong width.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        current = self._loaded.get(kind)
        if current is None:
            q = np.asarray(queries)
            rows = q.shape[0] if q.ndim == 2 else 0
            return np.full((rows, k), -np.inf, np.float32), np.full((rows, k), -1, np.int64)
        return search_index(current.searcher, queries, k, current.vindex.dim)

    def ntotal(self, kind: str) -> int:
        """Vectors in the loaded ``kind`` index (0 when none is loaded)."""
        current = self._loaded.get(kind)
        return current.vindex.ntotal if current else 0

    def version(self, kind: str) -> int | None:
        """The loaded version of ``kind`` (None when none is loaded)."""
        current = self._loaded.get(kind)
        return current.version if current else None

    def dim(self, kind: str) -> int | None:
        """The loaded ``kind`` index's vector width (None when none is loaded)."""
        current = self._loaded.get(kind)
        return current.vindex.dim if current else None

    def meta(self, kind: str) -> VersionMeta | None:
        """The sidecar of the loaded ``kind`` version (params: shape, nprobe, measured recall)."""
        current = self._loaded.get(kind)
        return current.meta if current else None
