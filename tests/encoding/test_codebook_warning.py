"""A codebook sample too small for its GMM is fitted (tests and demos do it on purpose) but says so, with the numbers:
rows per component against the paper's 1.75M rows for 256 components."""

import warnings

import numpy as np
import pytest

from idtprior.encoding import CodebookParams, fit_codebook
from idtprior.encoding.codebook import MIN_ROWS_PER_COMPONENT, SmallSampleWarning, check_sample_size


def test_256_components_on_1000_rows_warn_with_the_numbers():
    with pytest.warns(SmallSampleWarning) as caught:
        text = check_sample_size(1000, 256)
    assert len(caught) == 1 and str(caught[0].message) == text
    assert text.startswith("codebook: a GMM of 256 components fitted on 1,000 sample rows (3.9 rows per component, "
                           f"fewer than {MIN_ROWS_PER_COMPONENT}); the paper fits 256 on 1,750,000 rows (6,836 per "
                           "component)")


def test_the_papers_sample_and_the_demos_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_sample_size(1_750_000, 256) == ""  # the paper: 3500 videos x 500 rows
        assert check_sample_size(30_000, 64) == ""  # the demo: 60 videos x 500 rows, 64 components per type
        assert check_sample_size(MIN_ROWS_PER_COMPONENT * 8, 8) == ""  # the boundary itself is enough


def test_fit_codebook_warns_and_still_fits():
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(120, 426)).astype(np.float32)
    with pytest.warns(SmallSampleWarning, match=r"GMM of 4 components fitted on 120 sample rows \(30.0 rows per"):
        book = fit_codebook(sample, CodebookParams(n_components=4, gmm_iters=2, sketch_dim=8))
    assert book.n_components == 4  # a warning, not an error
