"""Keep a model's published indexes in step with its stored embeddings, and check that they are.

:func:`update_indexes` is incremental: it loads the published version, adds the embeddings
stored since (``id > max_embedding_id``), re-adds any stored vector the index lacks, removes
figures that no longer have a vector, and publishes the result as a new version. It rebuilds from
the stored vectors only when it must, and says why: the first build, crossing
``exact_index_max`` (exact -> approximate, or back below ``exact_index_max / retrain_growth``), an
approximate index that grew or shrank by ``retrain_growth`` since it was trained, a change of the
configured structure (IVF / HNSW), an HNSW index that would have to delete vectors (it cannot in
place), or ``rebuild=True``. Each approximate (re)build measures Recall@k against exact search and
sets its search effort (IVF nprobe, HNSW efSearch) from the recall target.

:func:`check_indexes` compares the published index, the catalogue's record of it and the stored
embeddings; with ``repair`` it publishes a corrected version.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from indexer.catalogue import Embedding, Figure, IndexVersion
from indexer.embeddings import KINDS, StoreState, VectorChunk, iter_vectors, store_state, vectors_for_figures
from indexer.publish import IndexStore, VersionMeta, ids_digest
from indexer.vector_index import (
    AnnSpec,
    IndexFileError,
    NeedsRebuildError,
    NprobeChoice,
    VectorIndex,
    exact_neighbours,
    tune_nprobe,
)
from training.fsio import file_sha256

StepHook = Callable[[str], None]


@dataclass(frozen=True)
class IndexOptions:
    """How indexes are built and kept (the CLI fills these from Settings).

    exact_index_max: up to this many vectors the index is exact.
    recall_target: Recall@``recall_k`` vs exact that IVF nprobe tuning must reach.
    retrain_growth: retrain an IVF index once its size left [trained / g, trained * g].
    keep_versions: index files kept per kind (older ones are pruned; rows stay).
    ann: the IVF recipe (codec, nlist, training sample).
    tune_queries: held-out queries per group for recall measurement.
    rebuild: rebuild from stored vectors even when an incremental update would do.
    """

    exact_index_max: int = 50_000
    recall_target: float = 0.95
    retrain_growth: float = 2.0
    keep_versions: int = 3
    ann: AnnSpec = field(default_factory=AnnSpec)
    tune_queries: int = 500
    recall_k: int = 10
    rebuild: bool = False


@dataclass
class KindReport:
    """What happened to one kind's index."""

    kind: str
    action: str = "empty"  # empty | unchanged | updated | built | rebuilt | retrained
    reason: str = ""
    version: int | None = None
    previous: int | None = None
    shape: str = ""
    ntotal: int = 0
    added: int = 0
    removed: int = 0
    nprobe: int | None = None
    recall: float | None = None
    seconds: float = 0.0

    def line(self) -> str:
        """One human line for this kind."""
        if self.action == "empty":
            return f"{self.kind}: no embeddings yet"
        text = f"{self.kind}: v{self.version} {self.shape} {self.ntotal} vectors ({self.action}"
        text += f", +{self.added} -{self.removed})" if self.action != "unchanged" else ")"
        if self.recall is not None:
            knob = "efSearch" if self.shape == "hnsw" else "nprobe"
            text += f" {knob}={self.nprobe} Recall@10={self.recall:.3f}"
        if self.reason:
            text += f" [{self.reason}]"
        return text


@dataclass
class IndexReport:
    """What :func:`update_indexes` did, per kind."""

    model_id: str
    kinds: dict[str, KindReport] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the whole run."""
        return f"indexes for {self.model_id} in {self.seconds:.1f}s: " + "; ".join(
            r.line() for r in self.kinds.values()
        )


def update_indexes(
    session_factory: sessionmaker[Session],
    index_dir: Path,
    model_id: str,
    *,
    options: IndexOptions | None = None,
    progress: bool = True,
    on_step: StepHook | None = None,
) -> IndexReport:
    """Bring the image and caption indexes of ``model_id`` up to date with the stored embeddings.

    Publishes a new version per kind that changed (see the module docstring); returns an
    :class:`IndexReport`. ``on_step(name)`` is called at each stage (tests kill the process there).
    """
    options = options or IndexOptions()
    store = IndexStore(index_dir, model_id)
    report = IndexReport(model_id)
    start = time.perf_counter()
    with store.writer_lock():
        for kind in KINDS:
            report.kinds[kind] = _update_kind(
                session_factory, store, kind, options, progress=progress, on_step=on_step
            )
    report.seconds = time.perf_counter() - start
    return report


def _update_kind(
    session_factory: sessionmaker[Session],
    store: IndexStore,
    kind: str,
    options: IndexOptions,
    *,
    progress: bool,
    on_step: StepHook | None,
    force_rebuild: str = "",
) -> KindReport:
    started = time.perf_counter()
    step = on_step or (lambda _name: None)
    rep = KindReport(kind)
    state = store_state(session_factory, store.model_id, kind)
    step(f"{kind}:begin")
    current = store.read_pointer(kind)
    rep.previous = rep.version = current
    loaded: tuple[VectorIndex, VersionMeta] | None = None
    if current is not None:
        try:
            loaded = store.load(kind, current)
        except IndexFileError as exc:
            force_rebuild = force_rebuild or f"published v{current} unloadable: {exc}"
    if loaded is None and state.max_embedding_id == 0:
        return rep
    n = int(state.figure_ids.size)
    reason = force_rebuild or _rebuild_reason(loaded, state, options)
    bar = tqdm(total=n, unit="vec", desc=f"index {kind}", disable=not progress, leave=False)
    try:
        if loaded is None or reason:
            vindex, choice = _build(session_factory, store.model_id, kind, state, options, bar)
            rep.action = "built" if loaded is None else ("retrained" if reason.startswith("retrained") else "rebuilt")
            rep.reason = reason
            rep.added = vindex.ntotal
            rep.removed = loaded[0].ntotal if loaded else 0
            if choice is not None:
                vindex.params.update(
                    recall=round(choice.recall, 4),
                    recall_k=options.recall_k,
                    recall_target=options.recall_target,
                    recall_reached=choice.reached,
                    nprobe_curve={str(k): round(v, 4) for k, v in choice.curve.items()},
                )
        else:
            vindex, meta = loaded
            try:
                rep.added, rep.removed = _reconcile(session_factory, store.model_id, kind, vindex, meta, state, bar)
            except NeedsRebuildError as exc:  # an HNSW graph cannot delete: build the version afresh
                return _update_kind(session_factory, store, kind, options, progress=progress, on_step=on_step,
                                    force_rebuild=f"rebuilt: {exc}")
            if not (rep.added or rep.removed) and meta.max_embedding_id == state.max_embedding_id:
                rep.action = "unchanged"
                _fill(rep, vindex)
                return rep
            rep.action = "updated"
        step(f"{kind}:built")
        meta = store.publish(
            session_factory,
            kind,
            vindex,
            max_embedding_id=state.max_embedding_id,
            keep=options.keep_versions,
            on_step=lambda s: step(f"{kind}:{s}"),
        )
        rep.version = meta.version
        _fill(rep, vindex)
        return rep
    finally:
        bar.close()
        rep.seconds = time.perf_counter() - started


def _fill(rep: KindReport, vindex: VectorIndex) -> None:
    rep.shape = vindex.shape
    rep.ntotal = vindex.ntotal
    if vindex.shape != "exact":
        rep.nprobe = vindex.nprobe
        recall = vindex.params.get("recall")
        rep.recall = float(recall) if recall is not None else None


def _rebuild_reason(
    loaded: tuple[VectorIndex, VersionMeta] | None, state: StoreState, options: IndexOptions
) -> str:
    """Why the published index must be rebuilt rather than updated ('' when it need not)."""
    if loaded is None:
        return ""
    vindex, _ = loaded
    n = int(state.figure_ids.size)
    g = options.retrain_growth
    if options.rebuild:
        return "rebuild requested"
    if state.dim is not None and state.dim != vindex.dim:
        return f"vector width changed from {vindex.dim} to {state.dim}"
    if vindex.shape == "exact" and n > options.exact_index_max:
        return f"switched to {options.ann.structure.upper()}: {n} vectors > exact_index_max {options.exact_index_max}"
    if vindex.shape != "exact" and n >= options.exact_index_max / g and vindex.shape != options.ann.structure:
        return f"switched from {vindex.shape.upper()} to {options.ann.structure.upper()} (configured structure)"
    if vindex.shape != "exact":
        if n < options.exact_index_max / g:
            return f"switched to exact: {n} vectors < exact_index_max / {g:g}"
        trained = int(vindex.params.get("trained_on", 0)) or 1
        if n > trained * g:
            return f"retrained: grew from {trained} to {n} vectors (> x{g:g})"
        if n < trained / g:
            return f"retrained: shrank from {trained} to {n} vectors (< /{g:g})"
    return ""


def _build(
    session_factory: sessionmaker[Session],
    model_id: str,
    kind: str,
    state: StoreState,
    options: IndexOptions,
    bar: tqdm,
) -> tuple[VectorIndex, NprobeChoice | None]:
    """A fresh index of every stored vector up to the snapshot (IVF above exact_index_max)."""
    chunks: list[VectorChunk] = []
    for chunk in iter_vectors(session_factory, model_id, kind, upto_id=state.max_embedding_id):
        chunks.append(chunk)
        bar.update(len(chunk))
    ids = np.concatenate([c.figure_ids for c in chunks]) if chunks else np.zeros(0, np.int64)
    dim = state.dim or 0
    xb = np.concatenate([c.vectors for c in chunks]) if chunks else np.zeros((0, dim), np.float32)
    del chunks
    if ids.size <= options.exact_index_max:
        vindex = VectorIndex.exact(xb.shape[1] if ids.size else dim)
        vindex.add(ids, xb)
        return vindex, None
    bar.set_postfix_str("training")
    vindex = VectorIndex.train_ann(xb, options.ann)
    bar.set_postfix_str("adding")
    vindex.add(ids, xb)
    bar.set_postfix_str("tuning nprobe")
    choice = _tune(session_factory, model_id, kind, vindex, xb, ids, options)
    return vindex, choice


def _tune(
    session_factory: sessionmaker[Session],
    model_id: str,
    kind: str,
    vindex: VectorIndex,
    xb: np.ndarray,
    ids: np.ndarray,
    options: IndexOptions,
) -> NprobeChoice:
    """Set nprobe from the recall target, measured on two held-out query groups: a sample of the
    indexed vectors (each left out of its own answer) and the other kind's vectors of the same
    figures (the cross-modal queries this index answers: text->image, image->text)."""
    k = options.recall_k
    rng = np.random.default_rng(options.ann.seed + 1)
    pick = np.sort(rng.choice(ids.size, min(options.tune_queries, ids.size), replace=False))
    own, exclude = xb[pick], ids[pick]
    groups: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = [
        (own, exact_neighbours(xb, ids, own, k, exclude), exclude)
    ]
    other = "caption" if kind == "image" else "image"
    cross = vectors_for_figures(session_factory, model_id, other, ids[pick].tolist())
    if len(cross) and cross.vectors.shape[1] == xb.shape[1]:
        groups.append((cross.vectors, exact_neighbours(xb, ids, cross.vectors, k), None))
    return tune_nprobe(vindex, groups, k=k, target=options.recall_target)


def _reconcile(
    session_factory: sessionmaker[Session],
    model_id: str,
    kind: str,
    vindex: VectorIndex,
    meta: VersionMeta,
    state: StoreState,
    bar: tqdm,
) -> tuple[int, int]:
    """Bring a loaded index to the stored set: add new vectors, re-add missing ones, drop stale
    figures. Returns (vectors added, vectors removed)."""
    added = 0
    for chunk in iter_vectors(
        session_factory, model_id, kind, after_id=meta.max_embedding_id, upto_id=state.max_embedding_id
    ):
        vindex.add(chunk.figure_ids, chunk.vectors)
        added += len(chunk)
        bar.update(len(chunk))
    held = vindex.ids()
    missing = np.setdiff1d(state.figure_ids, held, assume_unique=True)
    if missing.size:
        fill = vectors_for_figures(session_factory, model_id, kind, missing.tolist())
        keep = fill.embedding_ids <= state.max_embedding_id
        vindex.add(fill.figure_ids[keep], fill.vectors[keep])
        added += int(keep.sum())
    stale = np.setdiff1d(held, state.figure_ids, assume_unique=True)
    removed = vindex.remove(stale)
    bar.update(max(0, bar.total - bar.n))
    return added, removed


# --- check ---------------------------------------------------------------------------------------


@dataclass
class KindCheck:
    """How one kind's published index compares with the catalogue and the stored embeddings."""

    kind: str
    version: int | None = None
    ntotal: int = 0
    stored: int = 0  # figures with a stored vector of this kind
    missing: int = 0  # stored, not in the index
    stale: int = 0  # in the index, no stored vector (figure deleted or re-encoded away)
    unencoded: int = 0  # figures that have no vector of this kind yet (run `biomedsearch index`)
    problems: list[str] = field(default_factory=list)
    repaired: KindReport | None = None

    @property
    def ok(self) -> bool:
        """True when the index holds exactly the stored vectors and matches its record."""
        return not (self.missing or self.stale or self.problems)

    def line(self) -> str:
        """One human line."""
        state = "ok" if self.ok else "MISMATCH"
        text = (
            f"{self.kind}: {state} v{self.version} holds {self.ntotal}, stored {self.stored}, "
            f"missing {self.missing}, stale {self.stale}, not encoded {self.unencoded}"
        )
        if self.problems:
            text += " (" + "; ".join(self.problems) + ")"
        if self.repaired is not None:
            text += f" -> repaired: {self.repaired.line()}"
        return text


@dataclass
class CheckReport:
    """What :func:`check_indexes` found (and repaired)."""

    model_id: str
    kinds: dict[str, KindCheck] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every kind was consistent (before any repair)."""
        return all(c.ok for c in self.kinds.values())

    def summary(self) -> str:
        """One line per kind."""
        return "\n".join(c.line() for c in self.kinds.values())


def check_indexes(
    session_factory: sessionmaker[Session],
    index_dir: Path,
    model_id: str,
    *,
    repair: bool = False,
    options: IndexOptions | None = None,
    progress: bool = True,
) -> CheckReport:
    """Compare each published index with its catalogue record and the stored embeddings.

    Checks: the pointer's version loads, its file matches the sidecar's sha256, an
    ``index_versions`` row records it with the same count and ids digest, and the index holds
    exactly the figures that have a stored vector. With ``repair``, publishes a corrected version
    (re-adding what is missing, removing what is stale; rebuilding when the file is unusable).
    """
    options = options or IndexOptions()
    store = IndexStore(index_dir, model_id)
    report = CheckReport(model_id)
    with store.writer_lock():
        for kind in KINDS:
            chk = _check_kind(session_factory, store, kind)
            report.kinds[kind] = chk
            if repair and not chk.ok:
                # a damaged file or a wrong record: rebuild from stored vectors; otherwise add/remove
                rebuild = "; ".join(chk.problems)
                chk.repaired = _update_kind(
                    session_factory, store, kind, options, progress=progress, on_step=None, force_rebuild=rebuild
                )
    return report


def _check_kind(session_factory: sessionmaker[Session], store: IndexStore, kind: str) -> KindCheck:
    chk = KindCheck(kind)
    state = store_state(session_factory, store.model_id, kind)
    chk.stored = int(state.figure_ids.size)
    chk.unencoded = _count_unencoded(session_factory, store.model_id, kind)
    try:
        chk.version = store.read_pointer(kind)
    except IndexFileError as exc:
        chk.problems.append(str(exc))
        return chk
    if chk.version is None:
        chk.missing = chk.stored
        return chk
    try:
        vindex, meta = store.load(kind, chk.version, mmap=True)
    except IndexFileError as exc:
        chk.problems.append(f"published v{chk.version} unloadable: {exc}")
        chk.missing = chk.stored
        return chk
    if file_sha256(store.kind_dir(kind) / meta.file) != meta.file_sha256:
        chk.problems.append(f"v{chk.version} file sha256 differs from its sidecar")
    held = vindex.ids()
    chk.ntotal = int(held.size)
    with session_factory() as session:
        row = session.scalar(
            select(IndexVersion).where(
                IndexVersion.model_id == store.model_id,
                IndexVersion.kind == kind,
                IndexVersion.version == chk.version,
            )
        )
    if row is None:
        chk.problems.append(f"v{chk.version} has no index_versions row")
    elif row.ntotal != held.size or row.ids_digest != ids_digest(held):
        chk.problems.append(f"v{chk.version} differs from its index_versions row")
    chk.missing = int(np.setdiff1d(state.figure_ids, held, assume_unique=True).size)
    chk.stale = int(np.setdiff1d(held, state.figure_ids, assume_unique=True).size)
    return chk


def _count_unencoded(session_factory: sessionmaker[Session], model_id: str, kind: str) -> int:
    """Figures that could have a ``kind`` vector but have none for ``model_id``."""
    has_input = Figure.image_path.is_not(None) if kind == "image" else Figure.caption != ""
    done = exists().where(Embedding.figure_id == Figure.id, Embedding.model_id == model_id, Embedding.kind == kind)
    with session_factory() as session:
        return int(session.scalar(select(func.count(Figure.id)).where(and_(has_input, ~done))) or 0)
