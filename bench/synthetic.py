"""Synthetic embeddings that look like real ones: clustered, anisotropic, unit length.

Real CLIP embeddings are neither uniform noise on the sphere nor isolated points: they share a
common direction (pairs of unrelated figures still have cosine ~0.2-0.4), fall into many topical
clusters, and vary within a cluster along few dominant directions (a decaying spectrum, i.e. a low
intrinsic dimension). :func:`embedding_mixture` draws vectors with those three properties:

    x = normalise( shift * m  +  c_j  +  spread * R (s * g) )

- ``m``: one fixed unit direction (the shared component), weight ``shift``;
- ``c_j``: one of ``centers`` cluster means, themselves unit vectors with the same decaying spectrum;
- ``R (s * g)``: Gaussian noise with per-axis scales ``s_i ~ (1 + i) ** -decay`` (normalised to unit
  total variance) in a fixed random basis ``R``, scaled by ``spread``.

Queries are drawn *near data points*: ``normalise(x_i + query_noise * R (s * g))`` for random
indexed ``x_i`` (the point itself stays in the index). :func:`describe` measures what the data
looks like (cosine of random pairs, of each query to its 1st and 10th neighbour) so a reader can
compare with real embeddings; the figures are written into the benchmark JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import faiss
import numpy as np


@dataclass(frozen=True)
class MixtureSpec:
    """Parameters of :func:`embedding_mixture` (recorded with every result)."""

    dim: int = 512
    centers: int = 4096
    shift: float = 0.8
    spread: float = 0.5
    decay: float = 0.5
    query_noise: float = 0.35
    seed: int = 0

    def as_dict(self) -> dict[str, float | int]:
        """JSON-able parameters."""
        return asdict(self)


class _Mixture:
    """The fixed parts of a mixture (shared direction, basis, spectrum, cluster means)."""

    def __init__(self, spec: MixtureSpec) -> None:
        rng = np.random.default_rng(spec.seed)
        d = spec.dim
        self.spec = spec
        basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
        scales = (1.0 + np.arange(d)) ** -spec.decay
        scales /= np.sqrt((scales**2).sum())
        # rows of this matrix map a standard normal draw to correlated noise of unit total variance
        self.mix = (basis * scales).T.astype(np.float32)
        shared = rng.standard_normal(d)
        self.shared = (shared / np.linalg.norm(shared)).astype(np.float32)
        means = rng.standard_normal((spec.centers, d)).astype(np.float32) @ self.mix
        self.means = means / np.linalg.norm(means, axis=1, keepdims=True)

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.standard_normal((n, self.spec.dim), dtype=np.float32) @ self.mix


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def embedding_mixture(n: int, spec: MixtureSpec, *, seed: int = 1, chunk: int = 100_000) -> np.ndarray:
    """``n`` unit float32 vectors [n, dim] from the mixture ``spec`` (deterministic for a seed)."""
    mix = _Mixture(spec)
    rng = np.random.default_rng(seed)
    out = np.empty((n, spec.dim), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = spec.shift * mix.shared + mix.means[rng.integers(0, spec.centers, m)] + spec.spread * mix.noise(rng, m)
        out[start : start + m] = _normalise(x)
    return out


def queries_near(base: np.ndarray, nq: int, spec: MixtureSpec, *, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``nq`` queries near random rows of ``base``: (queries [nq, dim], the rows they were drawn from)."""
    mix = _Mixture(spec)
    rng = np.random.default_rng(seed)
    rows = rng.choice(base.shape[0], nq, replace=False)
    q = base[rows] + spec.query_noise * mix.noise(rng, nq)
    return _normalise(q.astype(np.float32)), rows


def describe(base: np.ndarray, queries: np.ndarray, truth_scores: np.ndarray) -> dict[str, float]:
    """Cosine statistics: random pairs, query -> 1st and 10th exact neighbour (from ``truth_scores``)."""
    rng = np.random.default_rng(7)
    a = base[rng.integers(0, base.shape[0], 2000)]
    b = base[rng.integers(0, base.shape[0], 2000)]
    return {
        "cos_random_pair": round(float(np.mean(np.sum(a * b, axis=1))), 3),
        "cos_query_nn1": round(float(np.mean(truth_scores[:, 0])), 3),
        "cos_query_nn10": round(float(np.mean(truth_scores[:, min(9, truth_scores.shape[1] - 1)])), 3),
    }


def exact_truth(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product (all threads): (scores [q, k], row positions [q, k])."""
    scores, pos = faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)
    return scores, pos
