"""kNN, the README's headline metric, against a brute-force float64 reference (``idtprior_testutils.knn_reference``)
on overlapping classes with unlabelled rows and k > 1: the leave-one-out monitor (``knn_accuracy``) and the held-out
protocol (``knn_classify``), both through their one-block and their blocked paths, and a case where counting a row
as its own neighbour would change the answer."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idtprior.models import clustering
from idtprior.models.clustering import knn_accuracy, knn_classify
from idtprior_testutils import knn_reference


def overlapping(n: int, seed: int, unlabelled: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Three classes whose Gaussian clouds overlap (a kNN is right about half the time), L2-normalised; a fraction
    of the rows unlabelled (-1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, 8))
    x = centres[y] * 0.6 + rng.normal(size=(n, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y[rng.random(n) < unlabelled] = -1
    return x.astype(np.float32), y


@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_the_leave_one_out_monitor_equals_the_reference(monkeypatch, k, blocked):
    if blocked:  # the blocked path the monitor takes above ~8k rows, on 7 rows a block
        monkeypatch.setattr(clustering, "block_rows", lambda columns: 7)
    x, y = overlapping(300, seed=k)
    got = knn_accuracy(torch.from_numpy(x), torch.from_numpy(y), k=k, tau=0.1)
    want = knn_reference(x, y, k=k, tau=0.1)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0.35 < want < 0.9  # overlapping: neither chance nor separable


def test_a_row_never_votes_for_itself():
    # with k = 1 a row counted as its own neighbour would always be right: the accuracy would be 1.0
    x, y = overlapping(200, seed=3, unlabelled=0.0)
    got = knn_accuracy(torch.from_numpy(x), torch.from_numpy(y), k=1, tau=0.1)
    assert got == pytest.approx(knn_reference(x, y, k=1, tau=0.1), abs=1e-12) and got < 0.8


@pytest.mark.parametrize("blocked", [False, True])
def test_the_held_out_protocol_equals_the_reference(monkeypatch, blocked):
    if blocked:
        monkeypatch.setattr(clustering, "block_rows", lambda columns: 5)
    train_x, train_y = overlapping(240, seed=11)
    test_x, test_y = overlapping(90, seed=12)
    for k in (1, 7, 30):
        got = knn_classify(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
                           torch.from_numpy(test_y), k=k, tau=0.07)
        assert got == pytest.approx(knn_reference(train_x, train_y, test_x, test_y, k=k, tau=0.07), abs=1e-12), k


def test_the_reference_agrees_with_an_independent_count_on_a_hand_made_case():
    # four points on a circle; the query between classes 0 and 1 is nearer to class 1's single row, but class 0's two
    # rows outweigh it at tau = 1 with k = 3, not with k = 1
    angle = np.array([0.0, 0.3, 1.2, 3.0])
    train_x = np.stack([np.cos(angle), np.sin(angle)], 1)
    train_y = np.array([0, 0, 1, 2])
    query = np.array([[np.cos(0.9), np.sin(0.9)]])
    assert knn_reference(train_x, train_y, query, [1], k=1, tau=1.0) == 1.0
    assert knn_reference(train_x, train_y, query, [1], k=3, tau=1.0) == 0.0
    got = knn_classify(F.normalize(torch.tensor(train_x, dtype=torch.float32), dim=1), torch.tensor(train_y),
                       torch.tensor(query, dtype=torch.float32), torch.tensor([1]), k=3, tau=1.0)
    assert got == 0.0
