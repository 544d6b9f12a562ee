"""Diagonal GMM by chunked float32 EM: planted components recovered, log-likelihood on par with scikit-learn."""

import numpy as np
import pytest

from idtprior.encoding import DiagGMM, fit_gmm, gmm_log_likelihood


def mixture_sample(n: int, k: int, d: int, sep: float, seed: int):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(k, 5.0))
    mu = rng.standard_normal((k, d)) * sep
    sd = rng.uniform(0.5, 1.5, (k, d))
    lab = rng.choice(k, size=n, p=w)
    x = mu[lab] + rng.standard_normal((n, d)) * sd[lab]
    return x.astype(np.float32), w, mu, sd**2


def sklearn_gmm(g: DiagGMM):
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(n_components=g.n_components, covariance_type="diag")
    gm.weights_ = g.weights.astype(np.float64)
    gm.means_ = g.means.astype(np.float64)
    gm.covariances_ = g.variances.astype(np.float64)
    gm.precisions_cholesky_ = 1.0 / np.sqrt(gm.covariances_)
    return gm


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
    assert gmm_log_likelihood(x, g, chunk_rows=300) == pytest.approx(sklearn_gmm(g).score(x), abs=1e-4)


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
