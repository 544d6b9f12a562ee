"""K-means: planted partitions are recovered by every backend, memory budget does not change results, empty clusters."""

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score as nmi

from idtprior.encoding import cupy_available, faiss_available, kmeans

BACKENDS = [
    "numpy",
    pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss not installed")),
]


def planted(n: int = 1500, k: int = 8, d: int = 30, spread: float = 6.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * spread
    labels = rng.integers(0, k, n)
    return (centers[labels] + rng.standard_normal((n, d))).astype(np.float32), labels


def inertia(x: np.ndarray, labels: np.ndarray, cents: np.ndarray) -> float:
    return float(((x - cents[labels]) ** 2).sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_recovers_planted_partition(backend):
    x, truth = planted()
    labels, cents = kmeans(x, 8, runs=3, seed=0, iters=20, backend=backend)
    assert labels.shape == (3, 1500) and cents.shape == (3, 8, 30) and cents.dtype == np.float32
    for r in range(3):
        assert nmi(truth, labels[r]) > 0.95
        # labels are the assignment to the returned centroids
        d2 = ((x[:, None, :] - cents[r][None]) ** 2).sum(-1)
        assert (d2[np.arange(len(x)), labels[r]] <= d2.min(1) + 1e-3).all()


def test_backends_give_the_same_quality():
    """On overlapping clusters every backend reaches sklearn's inertia within 3% and the same NMI within 0.03."""
    from sklearn.cluster import KMeans

    x, truth = planted(n=3000, k=20, d=16, spread=2.0, seed=3)
    ref = KMeans(20, n_init=3, random_state=0).fit(x)
    ref_nmi = nmi(truth, ref.labels_)
    backends = ["numpy"] + (["faiss"] if faiss_available() else [])
    for b in backends:
        labels, cents = kmeans(x, 20, runs=3, seed=0, iters=30, backend=b)
        best = min(inertia(x, labels[r], cents[r]) for r in range(3))
        assert best < 1.03 * ref.inertia_, (b, best, ref.inertia_)
        assert max(nmi(truth, labels[r]) for r in range(3)) > ref_nmi - 0.03, b


def test_memory_budget_only_changes_chunking():
    x, _ = planted(n=700, k=5, d=12)
    a = kmeans(x, 5, runs=2, seed=4, backend="numpy")
    b = kmeans(x, 5, runs=2, seed=4, backend="numpy", memory_budget_bytes=8 * 5 * 13)  # 13 rows per chunk
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)


def test_seeded_runs_are_reproducible_and_differ():
    x, _ = planted(n=800, k=12, d=8, spread=1.0, seed=5)
    a = kmeans(x, 12, runs=2, seed=7, backend="numpy", init="random")
    b = kmeans(x, 12, runs=2, seed=7, backend="numpy", init="random")
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0][0], a[0][1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_restarts_keep_the_lowest_inertia_run(backend):
    # Overlapping clusters and random inits: Lloyd's local optima differ between seeds.
    x, _ = planted(n=900, k=15, d=6, spread=2.0, seed=8)
    one = kmeans(x, 15, runs=3, seed=2, iters=10, backend=backend, init="random")
    one_again = kmeans(x, 15, runs=3, seed=2, iters=10, backend=backend, init="random", n_init=1)
    many = kmeans(x, 15, runs=3, seed=2, iters=10, backend=backend, init="random", n_init=6)
    np.testing.assert_array_equal(one[0], one_again[0])  # n_init=1 is the default stream
    e1 = [inertia(x, lab, c) for lab, c in zip(*one)]
    e6 = [inertia(x, lab, c) for lab, c in zip(*many)]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(e1, e6)), (e1, e6)  # restart 0 is the n_init=1 run
    assert sum(e6) < sum(e1)  # and some restart found a better optimum
    with pytest.raises(ValueError, match="n_init.*0"):
        kmeans(x, 2, n_init=0)


@pytest.mark.parametrize("init", ["random", "k-means++"])
def test_empty_clusters_are_reseeded(init):
    """Three distinct points, each repeated: random inits pick duplicates, which leaves clusters empty until re-seeded."""
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    x = np.repeat(pts, [200, 5, 5], axis=0)
    for seed in range(5):
        labels, cents = kmeans(x, 3, runs=1, seed=seed, iters=5, backend="numpy", init=init)
        assert len(np.unique(labels[0])) == 3
        np.testing.assert_allclose(np.sort(cents[0], axis=0), np.sort(pts, axis=0), atol=1e-5)


def test_bad_inputs_name_the_value():
    x, _ = planted(n=50, k=2, d=3)
    with pytest.raises(ValueError, match="k: .*N=50.*51"):
        kmeans(x, 51)
    with pytest.raises(ValueError, match="backend.*'gpu'"):
        kmeans(x, 2, backend="gpu")
    with pytest.raises(ValueError, match=r"shape \(150,\)"):
        kmeans(x.ravel(), 2)
    with pytest.raises(ValueError, match="runs.*0"):
        kmeans(x, 2, runs=0)
    bad = x.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="1 rows have non-finite"):
        kmeans(bad, 2, backend="numpy")


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA device")
def test_cupy_backend_matches_numpy():
    import cupy as cp

    x, truth = planted()
    labels, cents = kmeans(cp.asarray(x), 8, runs=2, seed=0, backend="auto")
    assert isinstance(labels, cp.ndarray)
    ref_labels, _ = kmeans(x, 8, runs=2, seed=0, backend="numpy")
    for r in range(2):
        assert nmi(truth, cp.asnumpy(labels[r])) > 0.95
        assert nmi(ref_labels[r], cp.asnumpy(labels[r])) > 0.99
