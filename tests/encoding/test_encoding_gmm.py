"""Diagonal GMM by chunked float32 EM: planted components recovered, log-likelihood on par with scikit-learn."""

import numpy as np
import pytest

from idtprior.encoding import DiagGMM, fit_gmm, gmm_log_likelihood, sufficient_statistics
from idtprior.encoding.gmm import estep_params, em_step


def mixture_sample(n: int, k: int, d: int, sep: float, seed: int):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(k, 5.0))
    mu = rng.standard_normal((k, d)) * sep
    sd = rng.uniform(0.5, 1.5, (k, d))
    lab = rng.choice(k, size=n, p=w)
    x = mu[lab] + rng.standard_normal((n, d)) * sd[lab]
    return x.astype(np.float32), w, mu, sd**2


def test_recovers_planted_components():
    x, w, mu, var = mixture_sample(6000, 4, 6, sep=5.0, seed=0)
    fit = fit_gmm(x, 4, seed=0, chunk_rows=1000)
    g = fit.gmm
    order = np.array([np.argmin(((g.means - m) ** 2).sum(1)) for m in mu])
    assert sorted(order) == [0, 1, 2, 3]
    np.testing.assert_allclose(g.means[order], mu, atol=0.1)
    np.testing.assert_allclose(g.variances[order], var, rtol=0.15)
    np.testing.assert_allclose(g.weights[order], w, atol=0.02)
    assert fit.converged and np.all(np.diff(fit.log_likelihood) > -1e-4)  # EM never decreases the likelihood


def test_log_likelihood_matches_sklearn_score():
    x, w, mu, var = mixture_sample(2000, 5, 7, sep=2.0, seed=1)
    g = DiagGMM(w.astype(np.float32), mu.astype(np.float32), var.astype(np.float32))
    assert gmm_log_likelihood(x, g, chunk_rows=300) == pytest.approx(g.to_sklearn().score(x), abs=1e-4)


def test_fit_log_likelihood_close_to_sklearn():
    from sklearn.mixture import GaussianMixture

    x, *_ = mixture_sample(5000, 10, 8, sep=2.0, seed=2)
    ref = GaussianMixture(10, covariance_type="diag", random_state=0, max_iter=200).fit(x)
    ours = fit_gmm(x, 10, iters=200, seed=0)
    ll = gmm_log_likelihood(x, ours.gmm)
    assert ll > ref.score(x) - 0.02, (ll, ref.score(x))


@pytest.mark.parametrize("init", ["kmeans", "kmeans++", "random"])
def test_inits_are_seeded(init):
    x, *_ = mixture_sample(1500, 3, 4, sep=4.0, seed=3)
    a = fit_gmm(x, 3, iters=5, seed=9, init=init).gmm
    b = fit_gmm(x, 3, iters=5, seed=9, init=init).gmm
    np.testing.assert_array_equal(a.means, b.means)


def test_variances_respect_the_floor():
    rng = np.random.default_rng(4)
    x = np.concatenate([np.zeros((100, 3)), rng.standard_normal((400, 3))]).astype(np.float32)  # a point mass
    g = fit_gmm(x, 3, seed=0, variance_floor=1e-3).gmm
    assert np.all(g.variances >= 1e-3 * x.var(0) * 0.999)
    assert np.isfinite(gmm_log_likelihood(x, g))


def test_bad_inputs_name_the_value():
    x = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="5 rows.*n_components=6"):
        fit_gmm(x, 6)
    with pytest.raises(ValueError, match="init.*'spectral'"):
        fit_gmm(x, 2, init="spectral")
    bad = np.ones((10, 2), np.float32)
    bad[7, 0] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        fit_gmm(bad, 2)
    with pytest.raises(ValueError, match="3 columns.*dimension 2"):
        gmm_log_likelihood(np.zeros((4, 3), np.float32),
                           DiagGMM(np.ones(1, np.float32), np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32)))


def test_float32_statistics_match_float64_on_offset_tight_components():
    # Tight components far from the origin (|mu| / sigma ~ 20) are where float32 sums cancel in S2 - mu^2 S0; the
    # chunk-wise float32 product summed in float64 must still give the float64 M-step to a small relative error.
    rng = np.random.default_rng(5)
    mu = rng.standard_normal((4, 6)) * 10
    lab = rng.integers(0, 4, 40_000)
    x = (mu[lab] + 0.5 * rng.standard_normal((40_000, 6))).astype(np.float32)
    g = DiagGMM(np.full(4, 0.25, np.float32), mu.astype(np.float32), np.full((4, 6), 0.3, np.float32))
    s32 = sufficient_statistics(x, g, chunk_rows=4096, precision="float32")
    s64 = sufficient_statistics(x, g, chunk_rows=4096, precision="float64")
    for a, b in zip(s32, s64):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    var32 = s32[2] / s32[0][:, None] - (s32[1] / s32[0][:, None]) ** 2
    var64 = s64[2] / s64[0][:, None] - (s64[1] / s64[0][:, None]) ** 2
    np.testing.assert_allclose(var32, var64, rtol=1e-3)
    np.testing.assert_allclose(var64, 0.25, rtol=0.05)  # the planted variance


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_tight_components_far_from_the_bulk_match_float64(precision):
    # Two overlapping tight components 100 standard deviations (per dimension) from a broad heavy one: their
    # log-densities go through the float64 path (q >> ILL_CONDITIONED_Q); posteriors, their sums and log p(x) must
    # match a float64 computation (sklearn's, and the direct one here).
    rng = np.random.default_rng(7)
    d, n = 16, 4000
    sigma = rng.uniform(0.5, 2.0, d)
    centre = 100 * sigma * rng.choice([-1.0, 1.0], d)
    mu = np.stack([np.zeros(d), centre + 0.05 * sigma, centre - 0.05 * sigma])
    var = np.stack([(100 * sigma) ** 2, sigma**2, sigma**2])
    w = np.array([0.8, 0.1, 0.1])
    lab = rng.choice(3, size=n, p=w)
    x = (mu[lab] + rng.standard_normal((n, d)) * np.sqrt(var[lab])).astype(np.float32)
    g = DiagGMM(w.astype(np.float32), mu.astype(np.float32), var.astype(np.float32))
    est = estep_params(g, np)
    assert est.n_ill == 2 and est.order.tolist() == [0, 1, 2]  # the pair is the ill-conditioned block
    s0, s1, s2, loglik = sufficient_statistics(x, g, chunk_rows=1000, precision=precision)
    x64, mu64, var64 = x.astype(np.float64), g.means.astype(np.float64), g.variances.astype(np.float64)
    logp = np.log(g.weights.astype(np.float64)) - 0.5 * (
        np.log(2 * np.pi * var64).sum(1) + ((x64[:, None] - mu64) ** 2 / var64).sum(-1))  # (n, 3)
    ref_ll = np.logaddexp.reduce(logp, axis=1)
    gamma = np.exp(logp - ref_ll[:, None])
    assert np.minimum(gamma[:, 1], gamma[:, 2])[lab > 0].mean() > 0.35  # the pair overlaps
    np.testing.assert_allclose(loglik, ref_ll, rtol=1e-6)
    np.testing.assert_allclose(loglik, g.to_sklearn().score_samples(x64), rtol=1e-6)
    np.testing.assert_allclose(s0, gamma.sum(0), rtol=1e-5)
    np.testing.assert_allclose(s1, gamma.T @ x64, rtol=1e-5)
    np.testing.assert_allclose(s2, gamma.T @ x64**2, rtol=1e-5)


def test_zero_weight_component_gets_no_mass():
    x, w, mu, var = mixture_sample(500, 3, 4, sep=3.0, seed=8)
    g = DiagGMM(np.array([0.5, 0.5, 0.0], np.float32), mu.astype(np.float32), var.astype(np.float32))
    s0, s1, s2, loglik = sufficient_statistics(x, g)
    assert np.isfinite(loglik).all() and s0[2] == 0.0 and s0.sum() == pytest.approx(500)
    two = DiagGMM(np.array([0.5, 0.5], np.float32), mu[:2].astype(np.float32), var[:2].astype(np.float32))
    np.testing.assert_allclose(loglik, sufficient_statistics(x, two)[3], rtol=1e-6)


def test_em_step_precisions_agree_and_fit_defaults_to_float32():
    x, *_ = mixture_sample(6000, 5, 4, sep=3.0, seed=6)
    a = fit_gmm(x, 5, iters=10, tol=0.0, seed=1)
    b = fit_gmm(x, 5, iters=10, tol=0.0, seed=1, precision="float64")
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-6)
    np.testing.assert_allclose(a.gmm.means, b.gmm.means, rtol=1e-4, atol=1e-4)
    data_var = x.astype(np.float64).var(0)
    g, ll, dead = em_step(x, a.gmm, 1e-4 * data_var, data_var)
    assert dead == 0 and ll == pytest.approx(gmm_log_likelihood(x, a.gmm), abs=1e-6)
    with pytest.raises(ValueError, match="precision.*'float16'"):
        fit_gmm(x, 2, precision="float16")
    with pytest.raises(ValueError, match="precision.*'half'"):
        sufficient_statistics(x, a.gmm, precision="half")
