"""FAISS wrapper: exact search, IVF congruence with exact search (Recall@10), add/remove, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from vector_fixtures import clustered

from indexer.vector_index import (
    AnnSpec,
    DimensionMismatchError,
    IndexFileError,
    NeedsRebuildError,
    VectorIndex,
    default_nlist,
    exact_neighbours,
    recall_at_k,
    tune_nprobe,
)


def test_exact_index_returns_true_top_k_by_inner_product() -> None:
    xb = clustered(500, 16, seed=1)
    ids = np.arange(1000, 1500)
    index = VectorIndex.exact(16)
    index.add(ids, xb)
    xq = clustered(7, 16, seed=2)
    scores, found = index.search(xq, 5)
    sims = xq @ xb.T
    want = ids[np.argsort(-sims, axis=1)[:, :5]]
    assert (found == want).all()
    np.testing.assert_allclose(scores, np.sort(sims, axis=1)[:, ::-1][:, :5], rtol=1e-5)


def test_k_larger_than_the_index_pads_with_minus_one() -> None:
    index = VectorIndex.exact(8)
    index.add([5, 9], clustered(2, 8))
    scores, found = index.search(clustered(3, 8, seed=4), 4)
    assert found.shape == (3, 4)
    assert set(found[:, :2].ravel()) == {5, 9}
    assert (found[:, 2:] == -1).all() and np.isneginf(scores[:, 2:]).all()
    empty_scores, empty_ids = VectorIndex.exact(8).search(clustered(1, 8), 3)
    assert (empty_ids == -1).all() and np.isneginf(empty_scores).all()


def test_bad_vectors_raise_typed_errors() -> None:
    index = VectorIndex.exact(8)
    with pytest.raises(DimensionMismatchError):
        index.add([1], np.zeros((1, 9), np.float32))
    with pytest.raises(DimensionMismatchError):
        index.search(np.zeros(8, np.float32), 3)
    with pytest.raises(DimensionMismatchError):
        index.add([1], np.full((1, 8), np.nan, np.float32))
    with pytest.raises(DimensionMismatchError):
        index.add([1, 2], clustered(3, 8))
    with pytest.raises(ValueError, match="duplicate"):
        index.add([1, 1], clustered(2, 8))
    with pytest.raises(ValueError):
        index.search(clustered(1, 8), 0)


@pytest.mark.parametrize("shape", ["exact", "ivf"])
def test_add_replaces_and_remove_drops_by_figure_id(shape: str) -> None:
    xb = clustered(2000, 16, seed=3)
    ids = np.arange(2000) * 3 + 7
    index = VectorIndex.exact(16) if shape == "exact" else VectorIndex.train_ivf(xb, AnnSpec(nlist=16, codec="Flat"))
    index.add(ids, xb)
    index.set_nprobe(16)
    assert index.ntotal == 2000 and (index.ids() == ids).all()
    # replace figure 7's vector: same id, new vector, no duplicate
    new = clustered(1, 16, seed=99)
    index.add([7], new)
    assert index.ntotal == 2000
    _, found = index.search(new, 1)
    assert found[0, 0] == 7
    # remove some (absent ids are ignored)
    gone = ids[:100]
    assert index.remove(np.concatenate([gone, [10**9]])) == 100
    assert index.ntotal == 1900
    _, found = index.search(xb[:100], 10)
    assert not np.isin(found, gone).any()
    assert (index.ids() == ids[100:]).all()


def test_ivf_congruence_with_exact_search_reaches_recall_target() -> None:
    """20k x 64-d Gaussian mixture: the tuned IVF index answers like exact search (Recall@10)."""
    n, dim, k, target = 20_000, 64, 10, 0.95
    xb = clustered(n, dim, centers=64, spread=0.5, seed=5)
    ids = np.arange(n, dtype=np.int64) + 1
    index = VectorIndex.train_ivf(xb, AnnSpec(codec="SQ8", nlist=128))
    index.add(ids, xb)
    nlist = index.params["nlist"]
    rng = np.random.default_rng(6)
    pick = rng.choice(n, 300, replace=False)
    tune_q, exclude = xb[pick], ids[pick]
    choice = tune_nprobe(index, [(tune_q, exact_neighbours(xb, ids, tune_q, k, exclude), exclude)], k=k, target=target)
    assert choice.reached and choice.recall >= target
    assert choice.nprobe < nlist // 4, "the index should be approximate, not a full scan"
    assert min(choice.curve.values()) < target, "nprobe=1 alone should miss: tuning had something to do"
    if choice.nprobe > 1:
        assert choice.curve.get(choice.nprobe - 1, 0.0) < target  # smallest nprobe that reaches it
    # fresh queries from the same mixture, never seen by tuning
    fresh = _fresh_queries(dim, seed=5, n=500)
    _, approx = index.search(fresh, k)
    measured = recall_at_k(approx, exact_neighbours(xb, ids, fresh, k), k)
    print(f"IVF{nlist},SQ8 n={n} nprobe={choice.nprobe} tune Recall@10={choice.recall:.3f} fresh={measured:.3f}")
    assert measured >= target - 0.02


def _fresh_queries(dim: int, *, seed: int, n: int) -> np.ndarray:
    """New draws around the means :func:`clustered` used with this seed (64 centres, spread 0.5)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((64, dim)).astype(np.float32)
    rng2 = np.random.default_rng(seed + 1000)
    x = means[rng2.integers(0, 64, n)] + 0.5 * rng2.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_lossy_codec_that_cannot_reach_target_says_so() -> None:
    xb = clustered(2000, 32, centers=8, spread=1.0, seed=7)
    ids = np.arange(2000)
    index = VectorIndex.train_ivf(xb, AnnSpec(codec="PQ2", nlist=16))
    index.add(ids, xb)
    q = xb[:100]
    choice = tune_nprobe(index, [(q, exact_neighbours(xb, ids, q, 10, ids[:100]), ids[:100])], target=0.99)
    assert not choice.reached and choice.nprobe == 16 and choice.recall < 0.99


def test_unknown_codec_and_too_few_vectors_are_refused() -> None:
    with pytest.raises(ValueError, match="codec"):
        VectorIndex.train_ivf(clustered(100, 8), AnnSpec(codec="HNSW"))
    with pytest.raises(ValueError, match="cannot train"):
        VectorIndex.train_ivf(clustered(10, 8), AnnSpec(nlist=16))


def test_default_nlist_grows_with_size_and_leaves_enough_training_points() -> None:
    assert default_nlist(100) == 16
    assert default_nlist(100_000) == 1024
    assert default_nlist(1_000_000) == 4096
    for n in (2_000, 20_000, 60_000):
        assert default_nlist(n) * 39 <= n


@pytest.mark.parametrize("shape", ["exact", "ivf", "hnsw"])
def test_written_index_reads_back_the_same_with_and_without_mmap(tmp_path: Path, shape: str) -> None:
    xb = clustered(3000, 32, seed=8)
    ids = np.arange(3000) + 10
    index = VectorIndex.exact(32) if shape == "exact" else VectorIndex.train_ann(
        xb, AnnSpec(nlist=32, structure="ivf" if shape == "ivf" else "hnsw"))
    assert index.shape == shape
    index.add(ids, xb)
    index.set_nprobe(8)
    path = tmp_path / "x.faiss"
    index.write(path)
    q = clustered(20, 32, seed=9)
    want = index.search(q, 10)
    for mmap in (False, True):
        back = VectorIndex.read(path, index.params, mmap=mmap)
        assert back.nprobe == index.nprobe and back.ntotal == 3000
        got = back.search(q, 10)
        assert (got[1] == want[1]).all()
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
        assert (back.ids() == ids).all()


def test_reading_a_missing_or_corrupt_file_raises_index_file_error(tmp_path: Path) -> None:
    with pytest.raises(IndexFileError):
        VectorIndex.read(tmp_path / "nope.faiss")
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not an index at all")
    with pytest.raises(IndexFileError):
        VectorIndex.read(bad)
    with pytest.raises(IndexFileError):
        VectorIndex.read(bad, mmap=True)


def test_hnsw_shape_tunes_ef_search_to_the_recall_target_and_refuses_in_place_deletes() -> None:
    """HNSW over 8-bit codes: efSearch tuned like nprobe reaches the target on fresh queries; adding
    new ids works, deleting (or re-adding) a held id asks for a rebuild."""
    n, dim, k, target = 20_000, 64, 10, 0.95
    xb = clustered(n, dim, centers=64, spread=0.5, seed=5)
    ids = np.arange(n, dtype=np.int64) + 1
    index = VectorIndex.train_ann(xb[:-100], AnnSpec(structure="hnsw"))
    index.add(ids[:-100], xb[:-100])
    index.add(ids[-100:], xb[-100:])  # a second add: new ids only
    assert index.shape == "hnsw" and index.ntotal == n and index.params["factory"] == "IDMap2,HNSW24_SQ8"
    rng = np.random.default_rng(6)
    pick = rng.choice(n, 300, replace=False)
    tune_q, exclude = xb[pick], ids[pick]
    # as the indexer does: held-out indexed vectors and off-data queries (its cross-modal group)
    off = _fresh_queries(dim, seed=5, n=800)[500:]
    groups = [(tune_q, exact_neighbours(xb, ids, tune_q, k, exclude), exclude),
              (off, exact_neighbours(xb, ids, off, k), None)]
    choice = tune_nprobe(index, groups, k=k, target=target)
    assert choice.reached and choice.recall >= target and index.nprobe == choice.nprobe == index.params["nprobe"]
    fresh = _fresh_queries(dim, seed=5, n=500)
    _, approx = index.search(fresh, k)
    assert recall_at_k(approx, exact_neighbours(xb, ids, fresh, k), k) >= target - 0.02
    assert index.remove([10**9]) == 0  # absent ids: nothing to do
    with pytest.raises(NeedsRebuildError):
        index.remove(ids[:3])
    with pytest.raises(NeedsRebuildError):
        index.add(ids[:1], xb[:1])
    assert index.ntotal == n
    with pytest.raises(ValueError, match="structure"):
        AnnSpec(structure="tree").factory_string(1000)
