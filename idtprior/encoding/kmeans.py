"""K-means for the cluster stage: faiss where installed, else a batched Lloyd on NumPy (CPU) or CuPy (GPU).

The Lloyd iteration never holds more than ``memory_budget_bytes`` of distances: rows are assigned in chunks of
``budget // (8 K)`` rows, each chunk computing ``|c|^2 / 2 - x.c`` with one matrix product (the ``|x|^2`` term does not change
the argmin). Centroids are updated with a sparse one-hot product, so an iteration costs one N x K x d product plus O(N d).
"""

from types import ModuleType
from typing import Any

import numpy as np

from idtprior.encoding.backend import get_array_module, sparse_module, to_device, to_numpy

BACKENDS = ("auto", "faiss", "numpy", "cupy")
INITS = ("auto", "k-means++", "random")

# k-means++ is sequential over k; above this many flops of seeding, "auto" init falls back to random rows (as faiss does).
KPP_AUTO_FLOPS = 2e10


def faiss_available() -> bool:
    """True when the optional ``faiss`` package imports."""
    try:
        import faiss  # type: ignore[import-not-found]  # noqa: F401
    except Exception:
        return False
    return True


def _chunk_rows(k: int, memory_budget_bytes: int) -> int:
    # distances (rows, K) float32 plus one temporary of the same size
    return max(1, int(memory_budget_bytes) // (8 * max(k, 1)))


def assign_nearest(x: Any, centroids: Any, xp: ModuleType, chunk_rows: int) -> tuple[Any, Any]:
    """Nearest centroid of every row.

    Args:
        x: (N, d) float32; centroids: (K, d) float32.
    Returns:
        labels (N,) int64 and squared distances to the chosen centroid (N,) float32 (clipped at 0).
    """
    n = x.shape[0]
    half_c2 = 0.5 * (centroids * centroids).sum(axis=1)  # (K,)
    labels = xp.empty(n, dtype=xp.int64)
    dmin = xp.empty(n, dtype=xp.float32)
    for start in range(0, n, chunk_rows):
        xc = x[start:start + chunk_rows]  # (b, d)
        dist = xc @ centroids.T  # (b, K)
        xp.subtract(half_c2, dist, out=dist)  # |c|^2/2 - x.c
        lab = dist.argmin(axis=1)
        labels[start:start + chunk_rows] = lab
        best = xp.take_along_axis(dist, lab[:, None], axis=1)[:, 0]
        dmin[start:start + chunk_rows] = xp.maximum((xc * xc).sum(axis=1) + 2.0 * best, 0.0)
    return labels, dmin


def _segment_sum(x: Any, labels: Any, k: int, xp: ModuleType) -> tuple[Any, Any]:
    """Per-cluster sums (K, d) float32 and counts (K,) int64, through a sparse (K, N) one-hot matrix."""
    n = x.shape[0]
    sp = sparse_module(xp)
    onehot = sp.csr_matrix(
        (xp.ones(n, dtype=xp.float32), (labels, xp.arange(n))), shape=(k, n)
    )
    sums = xp.asarray(onehot @ x, dtype=xp.float32)
    counts = xp.bincount(labels, minlength=k)
    return sums, counts


def kmeans_plusplus(x: Any, k: int, seed: int = 0, n_local_trials: int | None = None) -> Any:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, as in scikit-learn): each step draws ``n_local_trials``
    candidates by D^2 sampling and keeps the one that lowers the potential most.

    Args:
        x: (N, d) float array with N >= k; seed: the random seed; n_local_trials: default 2 + int(ln k).
    Returns:
        (k, d) float32 initial centroids, rows of ``x``.
    """
    xp = get_array_module(x)
    n = x.shape[0]
    if n < k:
        raise ValueError(f"x: {n} rows, need at least k={k} for k-means++")
    trials = n_local_trials if n_local_trials is not None else 2 + int(np.log(k))
    rng = np.random.default_rng(seed)
    x = xp.asarray(x, dtype=xp.float32)
    x2 = (x * x).sum(axis=1)  # (N,)

    def sqdist(idx: np.ndarray) -> Any:  # (len(idx), N)
        c = x[to_device(idx, xp)]
        return xp.maximum(x2[None, :] - 2.0 * (c @ x.T) + x2[to_device(idx, xp)][:, None], 0.0)

    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    d2 = sqdist(chosen[:1])[0]
    for j in range(1, k):
        p = to_numpy(d2).astype(np.float64)
        total = p.sum()
        if total <= 0:  # fewer distinct points than k: take unused rows
            rest = np.setdiff1d(np.arange(n), chosen[:j])
            chosen[j:] = rng.choice(rest, size=k - j, replace=False)
            break
        cand = np.minimum(np.searchsorted(np.cumsum(p), rng.random(trials) * total), n - 1)
        pots = xp.minimum(d2[None, :], sqdist(cand))  # (trials, N)
        best = int(to_numpy(pots.sum(axis=1)).argmin())
        chosen[j] = cand[best]
        d2 = pots[best]
    return x[to_device(chosen, xp)].copy()


def kpp_sample_rows(n: int, k: int) -> int:
    """Rows of the seeded subsample that k-means++ seeds ``k`` clusters of ``n`` rows from: max(8k, 4096), at most n."""
    return min(n, max(8 * k, 4096))


def auto_init(n: int, k: int, d: int) -> str:
    """The seeding ``init="auto"`` picks for ``n`` rows of ``d`` dimensions and ``k`` clusters: ``"k-means++"`` while
    its sequential cost, k * kpp_sample_rows(n, k) * d * (2 + ln k) flops, is at most ``KPP_AUTO_FLOPS``, else
    ``"random"``."""
    return "k-means++" if k * kpp_sample_rows(n, k) * d * (2 + np.log(k)) <= KPP_AUTO_FLOPS else "random"


def _init_centroids(x: Any, k: int, init: str, rng: np.random.Generator, xp: ModuleType) -> Any:
    n, d = x.shape
    if init == "auto":
        init = auto_init(n, k, d)
    if init == "random":
        return x[to_device(np.sort(rng.choice(n, size=k, replace=False)), xp)].copy()
    sub = np.sort(rng.choice(n, size=kpp_sample_rows(n, k), replace=False))
    return kmeans_plusplus(x[to_device(sub, xp)], k, seed=int(rng.integers(2**31)))


def _lloyd(x: Any, k: int, iters: int, init: str, rng: np.random.Generator, chunk: int,
           xp: ModuleType) -> tuple[Any, Any, float]:
    """One seeded k-means: labels (N,), centroids (K, d) and the inertia (sum of squared distances) of the labels."""
    cent = _init_centroids(x, k, init, rng, xp)  # (K, d)
    for _ in range(iters):
        labels, dmin = assign_nearest(x, cent, xp, chunk)
        sums, counts = _segment_sum(x, labels, k, xp)
        empty = to_numpy(counts == 0).nonzero()[0]
        new = sums / xp.maximum(counts, 1)[:, None].astype(xp.float32)
        if empty.size:
            # Re-seed empty clusters on the rows farthest from their centroid (distinct rows, largest error first).
            far = to_numpy(xp.argsort(-dmin)[: empty.size])
            new[to_device(empty, xp)] = x[to_device(far, xp)]
        cent = new
    labels, dmin = assign_nearest(x, cent, xp, chunk)
    return labels, cent, float(dmin.sum(dtype=xp.float64))


def _restart_rng(seed: int, run: int, restart: int) -> np.random.Generator:
    # restart 0 is the n_init=1 stream, so more restarts can only lower a run's inertia
    return np.random.default_rng([seed, run] if restart == 0 else [seed, run, restart])


def _kmeans_faiss(x: np.ndarray, k: int, runs: int, seed: int, iters: int,
                  init: str, n_init: int = 1) -> tuple[np.ndarray, np.ndarray]:
    import faiss  # type: ignore[import-not-found]

    n, d = x.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    labels = np.empty((runs, n), dtype=np.int64)
    cents = np.empty((runs, k, d), dtype=np.float32)
    for r in range(runs):
        best = np.inf
        for i in range(n_init):
            # max_points_per_centroid: use every row (faiss otherwise subsamples 256 rows per centroid);
            # min_points_per_centroid=1: no warning on stderr when N < 39 K (the demo: 240 videos, K=24)
            km = faiss.Kmeans(d, k, niter=iters, seed=int(seed) + 1000003 * r + 7919 * i,
                              max_points_per_centroid=max(n, 1), min_points_per_centroid=1, verbose=False)
            # Same seeding as the NumPy path (faiss's own is random rows, which merges clusters more often).
            km.train(x, init_centroids=_init_centroids(x, k, init, _restart_rng(int(seed), r, i), np))
            dist, idx = km.index.search(x, 1)
            if float(dist.sum(dtype=np.float64)) < best:
                best = float(dist.sum(dtype=np.float64))
                labels[r] = idx[:, 0]
                cents[r] = km.centroids
    return labels, cents


def kmeans(
    x: Any,
    k: int,
    runs: int = 3,
    seed: int = 0,
    iters: int = 20,
    backend: str = "auto",
    memory_budget_bytes: int = 256 * 2**20,
    init: str = "auto",
    n_init: int = 1,
) -> tuple[Any, Any]:
    """K-means, ``runs`` times with different seeds (the paper's m clusterings).

    Args:
        x: (N, d) float array (NumPy or CuPy); converted to float32.
        k: clusters, 1 <= k <= N.
        runs: m, independent runs; run r is seeded from (seed, r).
        seed: base seed.
        iters: Lloyd iterations per run (centroid updates); the returned labels are the assignment to the final centroids.
        backend: ``"faiss"`` (CPU faiss; needs the package), ``"numpy"``, ``"cupy"`` (needs a GPU) or ``"auto"``: the
            input's module if it is CuPy, else faiss when installed, else NumPy.
        memory_budget_bytes: cap on the distance block of the NumPy/CuPy Lloyd (not used by faiss).
        init: ``"k-means++"`` (greedy, on a seeded subsample of max(8k, 4096) rows), ``"random"`` (k distinct rows, as
            faiss does by default), or ``"auto"``: k-means++ when its sequential cost is small
            (k * min(N, max(8k, 4096)) * d * (2 + ln k) <= 2e10 flops), else random. Used by every backend.
        n_init: restarts per run; each run keeps the restart of lowest inertia (sum of squared distances), as
            scikit-learn's ``n_init``. Restart 0 is the ``n_init=1`` run, so raising it never raises a run's inertia;
            the cost grows linearly. Lloyd's local optima vary a lot when K is small (K=6 on the demo's 240 videos:
            NMI with the planted motion labels sd ~0.07 over seeds, inertia and NMI correlated at -0.8).
    Returns:
        labels (m, N) int64 in [0, k), and centroids (m, k, d) float32, on the module of the backend that ran.
    """
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"x: expected a 2-D array (N, d), got shape {getattr(x, 'shape', type(x).__name__)}")
    n, d = x.shape
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k: must be an integer in [1, N={n}], got {k!r}")
    if not isinstance(runs, (int, np.integer)) or runs < 1:
        raise ValueError(f"runs: must be a positive integer, got {runs!r}")
    if not isinstance(iters, (int, np.integer)) or iters < 0:
        raise ValueError(f"iters: must be a non-negative integer, got {iters!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {BACKENDS}, got {backend!r}")
    if init not in INITS:
        raise ValueError(f"init: must be one of {INITS}, got {init!r}")
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise ValueError(f"n_init: must be a positive integer, got {n_init!r}")
    if memory_budget_bytes < 8 * k:
        raise ValueError(f"memory_budget_bytes: {memory_budget_bytes} is below one row of distances ({8 * k} bytes)")
    xp_in = get_array_module(x)
    if backend == "auto":
        backend = "cupy" if xp_in is not np else ("faiss" if faiss_available() else "numpy")
    if backend == "faiss":
        if not faiss_available():
            raise ValueError("backend: 'faiss' requested but the faiss package is not installed (pip install faiss-cpu)")
        xh = to_numpy(x)
        if not np.isfinite(xh).all():
            raise ValueError(f"x: {int((~np.isfinite(xh)).any(axis=1).sum())} rows have non-finite values")
        return _kmeans_faiss(xh, int(k), int(runs), int(seed), int(iters), init, int(n_init))
    if backend == "cupy":
        from idtprior.encoding.backend import cupy, cupy_available

        if not cupy_available():
            raise ValueError("backend: 'cupy' requested but CuPy or a CUDA device is not available")
        xp = cupy
    else:
        xp = np
    xd = xp.asarray(to_numpy(x) if xp is np else x, dtype=xp.float32)
    if not bool(xp.isfinite(xd).all()):
        raise ValueError(f"x: {int((~xp.isfinite(xd)).any(axis=1).sum())} rows have non-finite values")
    chunk = _chunk_rows(int(k), memory_budget_bytes)
    labels = xp.empty((runs, n), dtype=xp.int64)
    cents = xp.empty((runs, k, d), dtype=xp.float32)
    for r in range(runs):
        best = np.inf
        for i in range(int(n_init)):
            lab, cent, inertia = _lloyd(xd, int(k), int(iters), init, _restart_rng(int(seed), r, i), chunk, xp)
            if inertia < best:
                best, labels[r], cents[r] = inertia, lab, cent
    return labels, cents
