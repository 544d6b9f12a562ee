import math
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from idtprior.evaluation.metrics import cluster_purity, contingency, mcnemar_exact, nmi


def test_purity_and_nmi_equal_hand_computation():
    # clusters {0: labels a, a, b}, {1: labels b, b}; marginals (3/5, 2/5) and (2/5, 3/5)
    clusters = [0, 0, 0, 1, 1]
    labels = ["a", "a", "b", "b", "b"]
    assert cluster_purity(clusters, labels) == pytest.approx(4 / 5)
    mi = 0.4 * math.log(0.4 / (0.6 * 0.4)) + 0.2 * math.log(0.2 / (0.6 * 0.6)) + 0.4 * math.log(0.4 / (0.4 * 0.6))
    h = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    assert nmi(clusters, labels) == pytest.approx(mi / h, rel=1e-12)
    assert contingency(clusters, labels).tolist() == [[2, 1], [0, 2]]


def test_unknown_labels_and_unclustered_rows_are_not_scored():
    clusters = np.array([0, 0, 1, 1, -1, 2])
    labels = np.array([3, 3, 4, 4, 4, -1])  # row 4 has no cluster, row 5 no label
    assert cluster_purity(clusters, labels) == 1.0
    assert nmi(clusters, labels) == pytest.approx(1.0)
    assert cluster_purity([0, 1, 1], ["x", None, ""]) == 1.0  # only row 0 is scored
    assert math.isnan(cluster_purity([-1, -1], [0, 1]))


def test_nmi_equals_sklearn_on_random_labelings():
    rng = np.random.default_rng(0)
    for k, c in ((2, 2), (7, 3), (30, 6), (1, 4)):
        clusters, labels = rng.integers(0, k, 300), rng.integers(0, c, 300)
        assert nmi(clusters, labels) == pytest.approx(normalized_mutual_info_score(labels, clusters), abs=1e-12)
    assert nmi([5, 5, 5], [1, 1, 1]) == normalized_mutual_info_score([1, 1, 1], [5, 5, 5]) == 1.0
    # purity is invariant to renaming clusters, and equals 1 for the labels themselves
    labels = rng.integers(0, 5, 100)
    assert cluster_purity(labels, labels) == 1.0
    assert cluster_purity(labels + 10, labels) == 1.0


def _paired(only_a: int, only_b: int, both: int = 10, neither: int = 4) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * only_a + [False] * only_b + [True] * both + [False] * neither)
    b = np.array([False] * only_a + [True] * only_b + [True] * both + [False] * neither)
    perm = np.random.default_rng(1).permutation(len(a))
    return a[perm], b[perm]


@pytest.mark.parametrize("only_a, only_b", [(22, 7), (30, 8), (3, 9), (0, 5)])
def test_mcnemar_exact_equals_hand_binomial_sum(only_a, only_b):
    n, m = only_a + only_b, min(only_a, only_b)
    expected = float(min(Fraction(1), 2 * Fraction(sum(math.comb(n, k) for k in range(m + 1)), 2**n)))
    got = mcnemar_exact(*_paired(only_a, only_b))
    assert (got.only_a, got.only_b) == (only_a, only_b)
    assert got.p_value == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact(*_paired(only_b, only_a)).p_value == pytest.approx(got.p_value, rel=1e-12)  # symmetric


def test_mcnemar_matches_the_readme_figures_and_edge_cases():
    # README (demo check): LA vs IR 22/7 p = 0.008; against random init 30/8 p = 0.0005
    assert round(mcnemar_exact(*_paired(22, 7)).p_value, 3) == 0.008
    assert round(mcnemar_exact(*_paired(30, 8)).p_value, 4) == 0.0005
    assert mcnemar_exact(*_paired(0, 0)).p_value == 1.0  # no discordant video
    assert mcnemar_exact(*_paired(3, 3)).p_value == 1.0  # 2 * P(X <= 3) > 1 is capped
    with pytest.raises(ValueError, match="bool"):
        mcnemar_exact(np.array([0, 1]), np.array([1, 1]))
    with pytest.raises(ValueError, match=r"\(3,\) and \(2,\)"):
        mcnemar_exact(np.ones(3, bool), np.ones(2, bool))
