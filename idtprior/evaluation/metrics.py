"""Scores of a clustering against labels (purity, NMI) and the paired test of two classifiers (exact McNemar).

Both clustering scores come from one cluster x class contingency table built with ``np.add.at`` (no loop per
cluster: K=6000 clusters of N=235k videos at the paper's scale). Labels may be ints (< 0: unknown) or strings (None
or "": unknown); clusters < 0 (no cluster) are left out too.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _known(values: np.ndarray) -> np.ndarray:
    """Mask of the rows with a known value: >= 0 for numbers, not None / "" otherwise."""
    if values.dtype.kind in "biuf":
        return values >= 0
    return np.array([v is not None and v != "" for v in values], dtype=bool)


def contingency(clusters: Sequence | np.ndarray, labels: Sequence | np.ndarray) -> np.ndarray:
    """``(K', C')`` int64 counts of the rows known in both, per distinct cluster (rows) and distinct label (columns)."""
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    if clusters.shape != labels.shape or clusters.ndim != 1:
        raise ValueError(f"clusters {clusters.shape} and labels {labels.shape} must be the same (N,) shape")
    keep = _known(clusters) & _known(labels)
    known = labels[keep]
    _, k = np.unique(clusters[keep], return_inverse=True)
    _, c = np.unique(known.astype(str) if known.dtype == object else known, return_inverse=True)
    table = np.zeros((k.max(initial=-1) + 1, c.max(initial=-1) + 1), np.int64)
    np.add.at(table, (k, c), 1)
    return table


def cluster_purity(clusters: Sequence | np.ndarray, labels: Sequence | np.ndarray) -> float:
    """Fraction of the scored rows whose label is their cluster's most common label (nan when none is scored)."""
    table = contingency(clusters, labels)
    total = int(table.sum())
    return float(table.max(axis=1, initial=0).sum()) / total if total else float("nan")


def nmi(clusters: Sequence | np.ndarray, labels: Sequence | np.ndarray) -> float:
    """Normalised mutual information ``I(K; C) / ((H(K) + H(C)) / 2)`` (natural logs; scikit-learn's default
    "arithmetic" normalisation and its conventions: 1.0 when both sides are one group, 0.0 when the MI is 0)."""
    table = contingency(clusters, labels).astype(np.float64)
    n = table.sum()
    if n == 0:
        return float("nan")
    if table.shape[0] == table.shape[1] == 1:
        return 1.0
    p = table / n  # (K, C) joint
    pk, pc = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pk, pc)[nz])).sum())
    if mi <= 0:
        return 0.0
    return mi / ((_entropy(pk) + _entropy(pc)) / 2)


def _entropy(q: np.ndarray) -> float:
    q = q[q > 0]
    return float(-(q * np.log(q)).sum())


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of two classifiers on the same videos."""

    only_a: int  # videos a gets right and b wrong
    only_b: int  # videos b gets right and a wrong
    p_value: float  # two-sided: min(1, 2 * P(X <= min(only_a, only_b))), X ~ Binomial(only_a + only_b, 1/2)


def mcnemar_exact(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> McNemar:
    """Paired exact McNemar test from per-video correctness ``(N,)`` bool of two networks (e.g. ``pred == truth``).

    Only the discordant videos count; p is 1.0 when there are none.
    """
    from scipy.stats import binom

    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired predictions must be two (N,) arrays, got {a.shape} and {b.shape}")
    if a.dtype != bool or b.dtype != bool:
        raise ValueError(f"McNemar takes per-video correctness (bool), got {a.dtype} and {b.dtype}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else min(1.0, 2.0 * float(binom.cdf(min(only_a, only_b), n, 0.5)))
    return McNemar(only_a, only_b, p)
