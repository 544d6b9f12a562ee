"""Codebook fitting: PCA modes, array round trip, stable fingerprint, parameter validation."""

import dataclasses

import numpy as np
import pytest

from idtprior.encoding import (
    DESCRIPTOR_DIM,
    Codebook,
    CodebookParams,
    count_sketch,
    fisher_vector,
    fit_codebook,
    fit_pca,
)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((1200, DESCRIPTOR_DIM)) * np.geomspace(3.0, 0.1, DESCRIPTOR_DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def codebook(sample) -> Codebook:
    return fit_codebook(sample, CodebookParams(n_components=4, gmm_iters=10, sketch_dim=64, sketch_seed=3))


def test_concat_pca_keeps_the_requested_variance(sample, codebook):
    _, _, ratio = fit_pca(sample, variance=1.0)
    cum = np.cumsum(ratio)
    d = codebook.blocks[0].dim
    assert cum[d - 1] >= 0.9 > cum[d - 2]
    comps = codebook.blocks[0].pca_components
    np.testing.assert_allclose(comps @ comps.T, np.eye(d), atol=1e-5)
    assert codebook.fv_dim == 2 * 4 * d


def test_pca_matches_sklearn(sample):
    from sklearn.decomposition import PCA

    mean, comps, ratio = fit_pca(sample, n_components=10)
    ref = PCA(10, svd_solver="full").fit(sample.astype(np.float64))
    np.testing.assert_allclose(mean, ref.mean_, atol=1e-5)
    np.testing.assert_allclose(np.abs(comps @ ref.components_.T), np.eye(10), atol=1e-3)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-4)


def test_per_type_halves_each_descriptor_type(sample):
    cb = fit_codebook(sample, CodebookParams(n_components=2, pca_mode="per_type", gmm_iters=3))
    assert [(b.start, b.stop, b.dim) for b in cb.blocks] == [
        (0, 30, 15), (30, 126, 48), (126, 234, 54), (234, 330, 48), (330, 426, 48)]
    assert cb.fv_dim == 2 * 2 * 213


def test_arrays_round_trip_and_fingerprint(sample, codebook):
    arrays = codebook.to_arrays()
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    back = Codebook.from_arrays(arrays)
    assert back.fingerprint() == codebook.fingerprint()
    assert back.sketch_seed == 3 and back.sketch_dim == 64 and back.pca_mode == "concat"
    x = sample[:50]
    np.testing.assert_array_equal(fisher_vector(x, back)[0], fisher_vector(x, codebook)[0])
    np.testing.assert_array_equal(count_sketch(fisher_vector(x, back)[0], back),
                                  count_sketch(fisher_vector(x, codebook)[0], codebook))
    # same data and settings -> same codebook; any change -> another fingerprint
    again = fit_codebook(sample, CodebookParams(n_components=4, gmm_iters=10, sketch_dim=64, sketch_seed=3))
    assert again.fingerprint() == codebook.fingerprint()
    assert dataclasses.replace(codebook, sketch_seed=4).fingerprint() != codebook.fingerprint()
    arrays["block0_gmm_means"] = arrays["block0_gmm_means"] + np.float32(1e-3)
    assert Codebook.from_arrays(arrays).fingerprint() != codebook.fingerprint()


def test_from_arrays_names_the_missing_key(codebook):
    arrays = codebook.to_arrays()
    del arrays["block0_gmm_variances"]
    with pytest.raises(ValueError, match="block0_gmm_variances"):
        Codebook.from_arrays(arrays)


def test_sketch_is_the_codebooks(codebook):
    sk = codebook.sketch
    assert sk.dim_in == codebook.fv_dim and sk.dim_out == 64 and sk.seed == 3


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"pca_mode": "pertype"}, "pca_mode.*'pertype'"),
        ({"n_components": 0}, "n_components.*0"),
        ({"pca_variance": 1.5}, "pca_variance.*1.5"),
        ({"covariance_floor": 0.0}, "covariance_floor.*0.0"),
        ({"gmm_init": "kmeans+"}, "gmm_init.*'kmeans\\+'"),
        ({"sketch_dim": -3}, "sketch_dim.*-3"),
    ],
)
def test_params_validation_names_the_value(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        CodebookParams(**kwargs)


def test_bad_samples_name_the_value(sample):
    with pytest.raises(ValueError, match="436 columns.*10:436"):
        fit_codebook(np.zeros((300, 436), np.float32), CodebookParams(n_components=2))
    with pytest.raises(ValueError, match="3 rows.*n_components=4"):
        fit_codebook(sample[:3], CodebookParams(n_components=4))
    bad = sample[:100].copy()
    bad[5, 5] = np.inf
    with pytest.raises(ValueError, match="1 of 100 rows"):
        fit_codebook(bad, CodebookParams(n_components=2))
    with pytest.raises(TypeError, match="dict"):
        fit_codebook(sample, {"n_components": 2})
