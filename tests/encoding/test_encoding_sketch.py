"""Count sketch: exact against a dense reference, deterministic from its seed, inner products preserved."""

import numpy as np
import pytest

from idtprior.encoding import CountSketch, count_sketch


def dense_reference(sk: CountSketch) -> np.ndarray:
    m = np.zeros((sk.dim_in, sk.dim_out))
    m[np.arange(sk.dim_in), sk.buckets] = sk.signs
    return m


def test_matches_dense_projection_for_vectors_and_rows():
    rng = np.random.default_rng(0)
    sk = CountSketch.from_seed(300, 40, seed=5)
    x = rng.standard_normal((7, 300)).astype(np.float32)
    ref = x.astype(np.float64) @ dense_reference(sk)
    out = count_sketch(x, sk)
    assert out.shape == (7, 40) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(count_sketch(x[3], sk), ref[3], atol=1e-5)


def test_deterministic_from_seed_and_different_across_seeds():
    a = CountSketch.from_seed(5000, 2000, seed=11)
    b = CountSketch.from_seed(5000, 2000, seed=11)
    c = CountSketch.from_seed(5000, 2000, seed=12)
    np.testing.assert_array_equal(a.buckets, b.buckets)
    np.testing.assert_array_equal(a.signs, b.signs)
    assert (a.buckets != c.buckets).mean() > 0.99
    assert set(np.unique(a.signs)) == {-1.0, 1.0}
    # pinned values: the projection must not change between versions (stored codebooks depend on it)
    assert a.buckets[:5].tolist() == [400, 612, 778, 1898, 474]
    assert a.signs[:5].tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0]


def test_inner_products_unbiased_with_variance_within_theory():
    """E[<Sx, Sy>] = <x, y>; Var = (|x|^2|y|^2 + <x,y>^2 - 2 sum x_i^2 y_i^2) / d' <= 2 / d' for unit vectors."""
    rng = np.random.default_rng(1)
    d, d_out, trials = 20000, 2000, 400
    x = rng.standard_normal(d)
    y = 0.6 * x + rng.standard_normal(d)  # correlated pair, <x, y> ~ 0.5
    x /= np.linalg.norm(x)
    y /= np.linalg.norm(y)
    exact = x @ y
    theory = (1.0 + exact**2 - 2 * np.sum(x**2 * y**2)) / d_out
    xy = np.stack([x, y]).astype(np.float32)
    err = np.empty(trials)
    for t in range(trials):
        s = count_sketch(xy, CountSketch.from_seed(d, d_out, seed=t)).astype(np.float64)
        err[t] = s[0] @ s[1] - exact
    se = np.sqrt(theory / trials)
    assert abs(err.mean()) < 4 * se  # unbiased
    # sample variance of 400 draws: within ~ +-25% of the truth (4 standard errors of a near-Gaussian variance estimate)
    assert 0.7 * theory < err.var() < 1.3 * theory
    assert err.var() < 2.0 / d_out


def test_norms_preserved_on_random_unit_vectors():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 8000))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = count_sketch(x.astype(np.float32), CountSketch.from_seed(8000, 2000, seed=3)).astype(np.float64)
    sq = (s * s).sum(1)
    assert abs(sq.mean() - 1.0) < 0.01
    assert sq.var() < 2.0 / 2000 * 1.3


def test_bad_inputs_name_the_value():
    sk = CountSketch.from_seed(10, 4, seed=0)
    with pytest.raises(ValueError, match="11 dimensions.*dim_in=10"):
        count_sketch(np.zeros(11), sk)
    with pytest.raises(ValueError, match=r"\(2, 2, 10\)"):
        count_sketch(np.zeros((2, 2, 10)), sk)
    with pytest.raises(ValueError, match="dim_out.*0"):
        CountSketch.from_seed(10, 0)
    with pytest.raises(TypeError, match="dict"):
        count_sketch(np.zeros(10), {"seed": 0})
