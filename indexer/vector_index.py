"""FAISS indexes over figure vectors, keyed by figure id.

Three shapes, all inner product over L2-normalised float32 vectors (so scores are cosines):

- **exact**: ``IndexIDMap2(IndexFlatIP)``; every query scans every vector. Used up to
  ``exact_index_max`` vectors.
- **approximate**: ``IVF<nlist>,<codec>`` (codec ``SQ8`` by default: 8-bit scalar quantisation,
  a quarter of the memory of flat vectors; ``Flat`` and ``PQ<m>`` are available), trained on a
  sample. ``nprobe`` is chosen by :func:`tune_nprobe` from a recall target: the smallest nprobe
  whose measured Recall@k against exact search on held-out queries reaches the target.
- **hnsw** (``AnnSpec(structure="hnsw")``): ``IDMap2,HNSW<M>_<codec>``, a FAISS HNSW graph (M=24
  links: at 100k x 512-d it reached Recall@10 0.95 at efSearch 16 and 16.1k single-thread queries/s,
  against 13.5k for M=16 and 12.1k for hnswlib M=16) over
  8-bit codes by default; its search effort ``efSearch`` is tuned like nprobe (the same
  ``nprobe`` parameter). Faster than IVF for single queries at high recall; FAISS's HNSW cannot
  delete a vector in place, so :meth:`VectorIndex.remove` (and re-adding a held id) raise
  :class:`NeedsRebuildError` and the indexer rebuilds the version instead.

Exact and IVF support adding and removing by figure id without a rebuild. Files load memory-mapped and
read-only where FAISS allows it (flat codes and IVF lists, ``IO_FLAG_MMAP_IFC``); other types fall
back to a normal read. On
hosts with ``faiss-gpu`` and GPUs, :func:`to_gpus` shards a loaded index over all of them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from training.fsio import fsync_file

log = logging.getLogger(__name__)

IndexShape = Literal["exact", "ivf", "hnsw"]
STRUCTURES = ("ivf", "hnsw")
MAX_EF_SEARCH = 4096  # the search-effort ceiling of an HNSW index when tuning
GPU_MAX_K = 2048  # faiss-gpu's limit on k and nprobe


class VectorIndexError(Exception):
    """Base class of the errors this module raises."""


class DimensionMismatchError(VectorIndexError, ValueError):
    """Vectors or queries whose width is not the index's dimension (or that are not 2-D)."""


class IndexFileError(VectorIndexError, OSError):
    """An index file that is missing or that FAISS cannot read."""


class NeedsRebuildError(VectorIndexError):
    """The change asked of an index that cannot make it in place (deleting from an HNSW graph)."""


def as_vectors(x: np.ndarray, dim: int | None = None, *, name: str = "vectors") -> np.ndarray:
    """Check ``x`` is a finite 2-D float array (of width ``dim`` if given); return it C-contiguous float32."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise DimensionMismatchError(f"{name} must be 2-D [n, dim], got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise DimensionMismatchError(f"{name} have width {arr.shape[1]}, the index has dimension {dim}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DimensionMismatchError(f"{name} must be floating point, got {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        raise DimensionMismatchError(f"{name} contain NaN or infinite values")
    return arr


def as_ids(ids: np.ndarray | list[int], n: int | None = None) -> np.ndarray:
    """Check ``ids`` is 1-D (of length ``n`` if given) with no negative values; return it int64."""
    arr = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
    if n is not None and arr.shape[0] != n:
        raise DimensionMismatchError(f"{arr.shape[0]} ids for {n} vectors")
    if arr.size and arr.min() < 0:
        raise ValueError("figure ids must be non-negative")
    return arr


def default_nlist(n: int) -> int:
    """The number of IVF cells for ``n`` vectors: ~4·sqrt(n), a power of two in [16, 65536].

    It is also capped so that every cell gets at least 39 training points from ``n`` vectors
    (FAISS's own warning threshold for k-means).
    """
    target = 4.0 * math.sqrt(max(n, 1))
    nlist = 1 << max(4, round(math.log2(target)))
    while nlist > 16 and nlist * 39 > n:
        nlist //= 2
    return min(nlist, 65536)


@dataclass(frozen=True)
class AnnSpec:
    """How an approximate index is built.

    codec: ``SQ8`` (8-bit scalar quantiser; the measured default, see bench/index_scale.py),
      ``Flat`` (full float32 vectors) or ``PQ<m>`` (product quantiser, m bytes per vector; recall
      may stay below a high target).
    nlist: IVF cells; None -> :func:`default_nlist` of the vector count.
    train_size: at most this many vectors (a uniform sample) train the quantisers.
    seed: the sampling and k-means seed (reproducible builds).
    """

    codec: str = "SQ8"
    nlist: int | None = None
    train_size: int = 100_000
    seed: int = 1234
    structure: str = "ivf"
    hnsw_m: int = 24
    ef_construction: int = 100

    def factory_string(self, n: int) -> str:
        """The FAISS index_factory string for ``n`` vectors, e.g. ``IVF1024,SQ8`` or ``IDMap2,HNSW24_SQ8``."""
        codec = self.codec
        if codec != "Flat" and codec != "SQ8" and not (codec.startswith("PQ") and codec[2:].isdigit()):
            raise ValueError(f"unknown IVF codec {codec!r}: use SQ8, Flat or PQ<m>")
        if self.structure not in STRUCTURES:
            raise ValueError(f"unknown index structure {self.structure!r}: use {' or '.join(STRUCTURES)}")
        if self.structure == "hnsw":
            if not 4 <= self.hnsw_m <= 256:
                raise ValueError(f"HNSW M must be in [4, 256], got {self.hnsw_m}")
            return f"IDMap2,HNSW{self.hnsw_m}" + (",Flat" if codec == "Flat" else f"_{codec}")
        nlist = self.nlist or default_nlist(n)
        if codec.startswith("PQ"):
            codec += "np"  # no polysemous training: it only serves Hamming filtering, and is slow
        return f"IVF{nlist},{codec}"


@dataclass
class VectorIndex:
    """A FAISS index whose ids are figure ids, with the parameters it was built and tuned with.

    ``params`` is a JSON-able dict (``shape``, ``factory``, ``nprobe``, ``recall``, ``trained_on``)
    that travels with every published version.
    """

    index: faiss.Index
    params: dict[str, Any] = field(default_factory=dict)

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def exact(cls, dim: int) -> VectorIndex:
        """An empty exact inner-product index of width ``dim``."""
        if dim < 1:
            raise ValueError(f"dimension must be positive, got {dim}")
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        return cls(index, {"shape": "exact", "factory": "IDMap2,Flat"})

    @classmethod
    def train_ivf(cls, vectors: np.ndarray, spec: AnnSpec | None = None) -> VectorIndex:
        """An empty IVF index trained on (a sample of) ``vectors`` [n, dim]; add the vectors after.

        Raises ValueError when there are too few vectors to train ``nlist`` cells.
        """
        spec = spec or AnnSpec()
        xb = as_vectors(vectors)
        n, dim = xb.shape
        factory = spec.factory_string(n)
        nlist = int(factory.split(",")[0][3:])
        if n < nlist:
            raise ValueError(f"{n} vectors cannot train {nlist} IVF cells")
        rng = np.random.default_rng(spec.seed)
        sample = xb if n <= spec.train_size else xb[np.sort(rng.choice(n, spec.train_size, replace=False))]
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = spec.seed
        index.train(sample)
        return cls(
            index,
            {"shape": "ivf", "factory": factory, "nlist": nlist, "nprobe": 1, "trained_on": int(n)},
        )

    @classmethod
    def train_ann(cls, vectors: np.ndarray, spec: AnnSpec | None = None) -> VectorIndex:
        """An empty approximate index (``spec.structure``: IVF or HNSW) trained on (a sample of)
        ``vectors`` [n, dim]; add the vectors after."""
        spec = spec or AnnSpec()
        if spec.structure != "hnsw":
            return cls.train_ivf(vectors, spec)
        xb = as_vectors(vectors)
        n, dim = xb.shape
        factory = spec.factory_string(n)
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        vi = cls(index, {"shape": "hnsw", "factory": factory, "hnsw_m": spec.hnsw_m,
                         "ef_construction": spec.ef_construction, "trained_on": int(n)})
        hnsw = vi._hnsw()
        assert hnsw is not None
        hnsw.hnsw.efConstruction = spec.ef_construction
        if not index.is_trained:  # the scalar quantiser learns its value ranges
            rng = np.random.default_rng(spec.seed)
            index.train(xb if n <= spec.train_size else xb[np.sort(rng.choice(n, spec.train_size, replace=False))])
        vi.set_nprobe(16)  # a starting point; the indexer tunes it to the recall target
        return vi

    # --- properties ------------------------------------------------------------------------------

    @property
    def shape(self) -> IndexShape:
        """``exact``, ``ivf`` or ``hnsw``."""
        if self._ivf() is not None:
            return "ivf"
        return "hnsw" if self._hnsw() is not None else "exact"

    @property
    def dim(self) -> int:
        """Vector width."""
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        """Number of vectors held."""
        return int(self.index.ntotal)

    @property
    def nprobe(self) -> int:
        """The search effort: IVF cells visited per query, HNSW's efSearch (1 for an exact index)."""
        ivf = self._ivf()
        if ivf is not None:
            return int(ivf.nprobe)
        hnsw = self._hnsw()
        return int(hnsw.hnsw.efSearch) if hnsw is not None else 1

    @property
    def max_nprobe(self) -> int:
        """The largest useful search effort: nlist (IVF), :data:`MAX_EF_SEARCH` (HNSW), 1 (exact)."""
        ivf = self._ivf()
        if ivf is not None:
            return int(ivf.nlist)
        return MAX_EF_SEARCH if self._hnsw() is not None else 1

    def set_nprobe(self, nprobe: int) -> None:
        """Set the search effort (nprobe / efSearch; ignored by an exact index); recorded in ``params``."""
        if self.shape == "exact":
            return
        nprobe = max(1, min(int(nprobe), self.max_nprobe))
        ivf = self._ivf()
        if ivf is not None:
            ivf.nprobe = nprobe
        else:
            self._hnsw().hnsw.efSearch = nprobe
        self.params["nprobe"] = nprobe

    def _ivf(self) -> Any:
        try:
            return faiss.extract_index_ivf(self.index)
        except RuntimeError:
            return None

    def _hnsw(self) -> Any:
        """The HNSW index inside the id map, or None."""
        return hnsw_inside(self.index)

    # --- content ---------------------------------------------------------------------------------

    def ids(self) -> np.ndarray:
        """The figure ids held, sorted, int64."""
        ivf = self._ivf()
        if ivf is None:
            idmap: Any = faiss.downcast_index(self.index)
            ids = faiss.vector_to_array(idmap.id_map)
            return np.sort(ids.astype(np.int64))
        invlists = ivf.invlists
        parts = []
        for cell in range(ivf.nlist):
            size = invlists.list_size(cell)
            if size:
                ptr = invlists.get_ids(cell)
                parts.append(faiss.rev_swig_ptr(ptr, size).copy())
                invlists.release_ids(cell, ptr)
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate(parts).astype(np.int64))

    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray) -> None:
        """Add ``vectors`` [n, dim] under figure ``ids``; an id already present is replaced."""
        xb = as_vectors(vectors, self.dim)
        xids = as_ids(ids, xb.shape[0])
        if xids.size == 0:
            return
        if np.unique(xids).size != xids.size:
            raise ValueError("duplicate figure ids in one add")
        if self.ntotal:
            self.remove(xids)
        self.index.add_with_ids(xb, xids)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove the vectors of figure ``ids`` (absent ids are ignored); return how many went.

        An HNSW index raises :class:`NeedsRebuildError` when any of ``ids`` is held.
        """
        xids = as_ids(ids)
        if xids.size == 0 or self.ntotal == 0:
            return 0
        if self._hnsw() is not None:
            held = int(np.isin(xids, self.ids(), assume_unique=False).sum())
            if held:
                raise NeedsRebuildError(f"an HNSW index cannot delete in place ({held} vectors to remove)")
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(xids)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product: (scores float32 [q, k], figure ids int64 [q, k]).

        Rows with fewer than k results are padded with id -1 and score -inf.
        """
        return search_index(self.index, queries, k, self.dim)

    # --- files -----------------------------------------------------------------------------------

    def write(self, path: Path) -> None:
        """Write the index to ``path`` and fsync it (the caller renames it into place)."""
        faiss.write_index(self.index, str(path))
        fsync_file(path)

    @classmethod
    def read(cls, path: Path, params: dict[str, Any] | None = None, *, mmap: bool = False) -> VectorIndex:
        """Load ``path``; with ``mmap`` memory-mapped read-only where the type allows (see :func:`read_faiss`)."""
        index = read_faiss(path, mmap=mmap)
        vi = cls(index, dict(params or {}))
        if "nprobe" in vi.params:
            vi.set_nprobe(int(vi.params["nprobe"]))
        return vi


def search_index(index: faiss.Index, queries: np.ndarray, k: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Search any FAISS index (CPU or GPU): (scores [q, k], ids [q, k]) with -1 / -inf padding."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    xq = as_vectors(queries, dim, name="queries")
    q = xq.shape[0]
    scores = np.full((q, k), -np.inf, dtype=np.float32)
    ids = np.full((q, k), -1, dtype=np.int64)
    k_eff = min(k, int(index.ntotal))
    if q == 0 or k_eff == 0:
        return scores, ids
    d, i = index.search(xq, k_eff)
    i = i.astype(np.int64, copy=False)
    d = np.where(i < 0, -np.inf, d).astype(np.float32, copy=False)
    scores[:, :k_eff] = d
    ids[:, :k_eff] = i
    return scores, ids


def read_faiss(path: Path, *, mmap: bool = False) -> faiss.Index:
    """Read a FAISS file; with ``mmap``, memory-mapped read-only where FAISS supports it.

    Flat codes and IVF inverted lists map in place; other types are read into memory. Raises
    :class:`IndexFileError` when the file is missing or unreadable.
    """
    if not Path(path).is_file():
        raise IndexFileError(f"no index file at {path}")
    if mmap:
        # IO_FLAG_MMAP_IFC maps flat codes and IVF lists in place (faiss >= 1.10); IO_FLAG_MMAP
        # maps IVF lists only. Whatever neither supports is read into memory.
        for flag in ("IO_FLAG_MMAP_IFC", "IO_FLAG_MMAP"):
            if hasattr(faiss, flag):
                try:
                    return faiss.read_index(str(path), getattr(faiss, flag) | faiss.IO_FLAG_READ_ONLY)
                except RuntimeError as exc:
                    log.debug("%s load of %s failed (%s)", flag, path, exc)
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexFileError(f"cannot read index {path}: {exc}") from exc


def hnsw_inside(index: faiss.Index) -> Any:
    """The ``IndexHNSW`` an id map wraps, or None (an exact or IVF index)."""
    inner = getattr(faiss.downcast_index(index), "index", None)
    if inner is None:
        return None
    inner = faiss.downcast_index(inner)
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def num_gpus() -> int:
    """GPUs FAISS can use (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def to_gpus(index: faiss.Index) -> faiss.Index:
    """Clone a CPU index onto all GPUs, sharded (each GPU holds 1/n of the vectors).

    Only call when :func:`num_gpus` > 0. nprobe is clamped to faiss-gpu's limit first. An HNSW
    index has no GPU form: it is returned as it is (searched on the CPU).
    """
    if hnsw_inside(index) is not None:
        return index
    try:
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(int(ivf.nprobe), GPU_MAX_K)
    except RuntimeError:
        pass
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_all_gpus(index, co=options)


# --- recall measurement and nprobe tuning --------------------------------------------------------


def exact_neighbours(
    base: np.ndarray, base_ids: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Exact top-``k`` figure ids [q, k] of ``queries`` among ``base`` (inner product, brute force).

    ``exclude[i]`` (a figure id, or -1) is left out of row i's answer: a query drawn from the
    indexed vectors is then held out from its own neighbours.
    """
    xb = as_vectors(base)
    bids = as_ids(base_ids, xb.shape[0])
    xq = as_vectors(queries, xb.shape[1], name="queries")
    extra = 1 if exclude is not None else 0
    kk = min(k + extra, xb.shape[0])
    _, pos = faiss.knn(xq, xb, kk, metric=faiss.METRIC_INNER_PRODUCT)
    ids = np.where(pos >= 0, bids[np.clip(pos, 0, None)], -1)
    return _drop_excluded(ids, exclude, k)


def _drop_excluded(ids: np.ndarray, exclude: np.ndarray | None, k: int) -> np.ndarray:
    """Row-wise: remove ``exclude[i]`` from ``ids[i]``, keep the first ``k`` (pad with -1)."""
    out = np.full((ids.shape[0], k), -1, dtype=np.int64)
    for row in range(ids.shape[0]):
        kept = ids[row]
        if exclude is not None:
            kept = kept[kept != exclude[row]]
        kept = kept[:k]
        out[row, : kept.size] = kept
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / |truth[:k]| (ignoring -1 padding)."""
    total = 0.0
    rows = 0
    for f, t in zip(found[:, :k], truth[:, :k], strict=True):
        t_set = {int(x) for x in t if x >= 0}
        if not t_set:
            continue
        total += len(t_set.intersection(int(x) for x in f if x >= 0)) / len(t_set)
        rows += 1
    return total / rows if rows else 1.0


@dataclass(frozen=True)
class NprobeChoice:
    """Result of :func:`tune_nprobe`: the chosen nprobe, its measured recall, and the curve."""

    nprobe: int
    recall: float
    reached: bool
    curve: dict[int, float]


def tune_nprobe(
    index: VectorIndex,
    query_groups: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    *,
    k: int = 10,
    target: float = 0.95,
) -> NprobeChoice:
    """Pick the smallest nprobe whose Recall@k vs exact reaches ``target`` in every query group.

    ``query_groups``: ``(queries [q, d], exact ids [q, k] from :func:`exact_neighbours`, exclude
    ids or None)``; e.g. caption vectors (text->image) and held-out image vectors (image->image).
    Doubles nprobe until the target is met, then bisects between the last miss and the first
    hit. When even nprobe = nlist misses (a lossy codec), returns nlist with ``reached`` False.
    An HNSW index is tuned the same way on efSearch (up to :data:`MAX_EF_SEARCH`).
    The index is left set to the chosen nprobe.
    """
    if index.shape == "exact":
        return NprobeChoice(1, 1.0, True, {1: 1.0})
    nlist = index.max_nprobe
    curve: dict[int, float] = {}

    def measure(nprobe: int) -> float:
        if nprobe not in curve:
            index.set_nprobe(nprobe)
            worst = 1.0
            for queries, truth, exclude in query_groups:
                extra = 1 if exclude is not None else 0
                _, found = index.search(queries, k + extra)
                found = _drop_excluded(found, exclude, k)
                worst = min(worst, recall_at_k(found, truth, k))
            curve[nprobe] = worst
        return curve[nprobe]

    lo, hi = 0, 1  # lo: largest nprobe known to miss; hi: candidate
    while measure(hi) < target:
        if hi >= nlist:
            index.set_nprobe(nlist)
            return NprobeChoice(nlist, curve[nlist], False, dict(sorted(curve.items())))
        lo, hi = hi, min(hi * 2, nlist)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(mid) >= target:
            hi = mid
        else:
            lo = mid
    index.set_nprobe(hi)
    return NprobeChoice(hi, curve[hi], True, dict(sorted(curve.items())))
