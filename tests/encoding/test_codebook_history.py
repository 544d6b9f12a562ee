"""The codebook fit's report: PCA variance kept per block and the EM log-likelihood per iteration (what the
fit_codebook stage's record and artifact show), and that reporting changes nothing of the codebook."""

import numpy as np
import pytest

from idtprior.encoding.codebook import (DESCRIPTOR_TYPES, CodebookParams, fit_codebook, fit_codebook_with_report)


def sample(n: int = 600, seed: int = 0) -> np.ndarray:
    """(n, 426) float32: four blobs in a low-rank subspace plus noise, so PCA at 0.9 keeps a few components."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(6, 426))
    centres = rng.normal(scale=4.0, size=(4, 6))
    z = centres[rng.integers(0, 4, n)] + rng.normal(size=(n, 6))
    return (z @ basis + 0.3 * rng.normal(size=(n, 426))).astype(np.float32)


def variance_kept(x: np.ndarray, d: int) -> float:
    """Direct computation: the top-d eigenvalues of the float64 covariance over their sum."""
    evals = np.sort(np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False)))[::-1]
    return float(evals[:d].sum() / evals.sum())


def test_concat_report_gives_the_pca_variance_kept_and_a_non_decreasing_em_log_likelihood():
    x = sample()
    cfg = CodebookParams(n_components=4, pca_variance=0.9, gmm_iters=25, gmm_tol=0.0, sketch_dim=32)
    book, (report,) = fit_codebook_with_report(x, cfg)
    assert report.pca_dim == book.blocks[0].dim
    assert 0.0 < report.pca_variance_kept <= 1.0
    assert report.pca_variance_kept == pytest.approx(variance_kept(x, report.pca_dim), rel=1e-6)
    assert report.pca_variance_kept >= 0.9 > variance_kept(x, report.pca_dim - 1)  # the fewest reaching 0.9
    ll = np.array(report.log_likelihood)
    assert len(ll) == 25 and not report.converged  # tol 0: every iteration runs
    assert np.all(np.diff(ll) >= -1e-5 * np.abs(ll[1:])), ll  # EM never lowers the likelihood (float32 rounding)
    assert ll[-1] > ll[0]
    assert report.to_json()["log_likelihood"] == list(report.log_likelihood)


def test_per_type_report_has_one_block_per_descriptor_type_each_with_its_own_variance_kept():
    x = sample(seed=1)
    cfg = CodebookParams(n_components=3, pca_mode="per_type", gmm_iters=5, sketch_dim=32)
    book, reports = fit_codebook_with_report(x, cfg)
    assert [(r.start, r.stop) for r in reports] == [(b.start, b.stop) for b in book.blocks]
    for r, (_, d) in zip(reports, DESCRIPTOR_TYPES):
        assert r.pca_dim == d // 2
        assert r.pca_variance_kept == pytest.approx(variance_kept(x[:, r.start:r.stop], d // 2), rel=1e-6)
        assert 1 <= len(r.log_likelihood) <= 5


def test_the_report_changes_no_array_of_the_codebook():
    x = sample(seed=2)
    cfg = CodebookParams(n_components=4, gmm_iters=8, sketch_dim=32)
    plain = fit_codebook(x, cfg)
    reported, _ = fit_codebook_with_report(x, cfg)
    assert plain.fingerprint() == reported.fingerprint()
    a, b = plain.to_arrays(), reported.to_arrays()
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
