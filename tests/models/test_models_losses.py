import math

import numpy as np
import pytest
import torch

from idtprior.models import draw_noise, ir_nce_loss, ir_softmax_loss, la_loss, nce_log_z, resnet3d

TAU = 0.07


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _inputs(seed=0, b=5, n=23, d=8):
    rng = np.random.default_rng(seed)
    v, bank = _unit(rng, b, d), _unit(rng, n, d)
    indices = rng.choice(n, size=b, replace=False)
    return rng, v, bank, indices


def _t(*arrays):
    return [torch.as_tensor(a) for a in arrays]


def nce_reference(v, bank, indices, noise, z, tau=TAU):
    """Wu et al.'s NCECriterion written out in float64: P = exp(v.b/tau)/Z, h = P / (P + K/N)."""
    n, k = bank.shape[0], noise.shape[1]
    total = 0.0
    for i in range(v.shape[0]):
        p_pos = math.exp(v[i] @ bank[indices[i]] / tau) / z
        total += math.log(p_pos / (p_pos + k / n))
        for j in noise[i]:
            p = math.exp(v[i] @ bank[j] / tau) / z
            total += math.log((k / n) / (p + k / n))
    return -total / v.shape[0]


def la_reference(v, bank, indices, labels, k, tau=TAU):
    """Zhuang et al.'s LA loss written out: top-k background, close = same cluster in any clustering."""
    n = bank.shape[0]
    k = min(k, n)
    terms = []
    for i in range(v.shape[0]):
        dots = bank @ v[i]
        background = np.argsort(-dots, kind="stable")[:k]
        close = [j for j in background if any(labels[r, j] == labels[r, indices[i]] for r in range(labels.shape[0]))]
        if not close:
            continue
        num = sum(math.exp(dots[j] / tau) for j in close)
        den = sum(math.exp(dots[j] / tau) for j in background)
        terms.append(-math.log(num / den))
    return float(np.mean(terms))


def test_nce_log_z_is_n_times_mean_exp():
    rng, v, bank, _ = _inputs()
    noise = rng.integers(0, bank.shape[0], size=(5, 7))
    got = float(nce_log_z(*_t(v, bank, noise), TAU))
    want = math.log(bank.shape[0] * np.mean(np.exp(np.einsum("bd,bkd->bk", v, bank[noise]) / TAU)))
    assert got == pytest.approx(want, abs=1e-5)


def test_ir_nce_matches_numpy_reference():
    rng, v, bank, indices = _inputs(1)
    noise = rng.integers(0, bank.shape[0], size=(5, 11))
    z = 37.5
    got = float(ir_nce_loss(*_t(v, bank, indices, noise), math.log(z), TAU))
    assert got == pytest.approx(nce_reference(v, bank, indices, noise, z), abs=1e-5)


def test_ir_nce_float32_matches_reference():
    rng, v, bank, indices = _inputs(2)
    noise = rng.integers(0, bank.shape[0], size=(5, 11))
    log_z = float(nce_log_z(*_t(v.astype(np.float32), bank.astype(np.float32), noise), TAU))
    got = float(ir_nce_loss(*_t(v.astype(np.float32), bank.astype(np.float32), indices, noise), log_z, TAU))
    assert got == pytest.approx(nce_reference(v, bank, indices, noise, math.exp(log_z)), abs=1e-5)


def test_ir_softmax_matches_numpy_reference():
    _, v, bank, indices = _inputs(3)
    logits = v @ bank.T / TAU
    want = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(5), indices])
    assert float(ir_softmax_loss(*_t(v, bank, indices), TAU)) == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("k", [6, 15, 23])
def test_la_matches_numpy_reference_with_union_over_clusterings(k):
    rng, v, bank, indices = _inputs(4)
    labels = np.stack([rng.integers(0, 4, size=23), rng.integers(0, 5, size=23), rng.integers(0, 3, size=23)])
    got = float(la_loss(*_t(v, bank, indices, labels), k=k, tau=TAU))
    assert got == pytest.approx(la_reference(v, bank, indices, labels, k), abs=1e-5)
    # the union matters: one clustering alone gives a different (larger) loss
    single = float(la_loss(*_t(v, bank, indices, labels[:1]), k=k, tau=TAU))
    assert single == pytest.approx(la_reference(v, bank, indices, labels[:1], k), abs=1e-5)
    assert single > got


def test_la_skips_rows_without_close_neighbours_in_background():
    _, v, bank, indices = _inputs(5)
    labels = np.arange(23)[None]  # own cluster only: close = {i}, usually outside a top-2 background
    got = float(la_loss(*_t(v, bank, indices, labels), k=2, tau=TAU))
    want = la_reference(v, bank, indices, labels, 2) if any(
        indices[i] in np.argsort(-(bank @ v[i]))[:2] for i in range(5)) else 0.0
    assert got == pytest.approx(want, abs=1e-5)


def test_la_with_singleton_clusters_is_instance_discrimination():
    _, v, bank, indices = _inputs(6)
    singletons = torch.arange(23)[None].repeat(3, 1)
    v_t, bank_t, idx_t = _t(v, bank, indices)
    la = la_loss(v_t, bank_t, idx_t, singletons, k=4096, tau=TAU)  # k clipped to N = 23
    assert float(la) == pytest.approx(float(ir_softmax_loss(v_t, bank_t, idx_t, TAU)), abs=1e-6)


def test_la_rejects_bad_label_shape():
    _, v, bank, indices = _inputs()
    with pytest.raises(ValueError, match=r"cluster_labels shape \(2, 22\)"):
        la_loss(*_t(v, bank, indices), torch.zeros(2, 22, dtype=torch.long))


@pytest.mark.parametrize("objective", ["ir", "ir_exact", "la"])
def test_gradients_flow_only_into_the_network(objective):
    torch.manual_seed(0)
    net = resnet3d(width=0.125, embed_dim=16)
    bank = torch.nn.functional.normalize(torch.randn(10, 16), dim=1)
    before = bank.clone()
    indices = torch.tensor([1, 4, 7])
    v = net(torch.randn(3, 3, 4, 32, 32))
    if objective == "ir":
        noise = draw_noise(3, 10, 6, torch.Generator().manual_seed(0))
        loss = ir_nce_loss(v, bank, indices, noise, nce_log_z(v, bank, noise, TAU))
    elif objective == "ir_exact":
        loss = ir_softmax_loss(v, bank, indices)
    else:
        loss = la_loss(v, bank, indices, torch.tensor([[0, 0, 1, 1, 0, 2, 2, 1, 0, 2]]), k=5)
    loss.backward()
    assert bank.grad is None and not bank.requires_grad
    assert torch.equal(bank, before)
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads)
    assert net.conv1.weight.grad.abs().sum() > 0 and net.fc.weight.grad.abs().sum() > 0


def test_knn_accuracy_on_separated_clusters_and_kmeans_recovers_them():
    from idtprior.models import knn_accuracy, lloyd_kmeans

    rng = np.random.default_rng(0)
    centres = _unit(rng, 3, 8) * 5
    labels = np.repeat(np.arange(3), 10)
    x = torch.as_tensor(centres[labels] + 0.1 * rng.standard_normal((30, 8)), dtype=torch.float32)
    assert knn_accuracy(torch.nn.functional.normalize(x, dim=1), torch.as_tensor(labels), k=5) == 1.0
    found, _ = lloyd_kmeans(x, 3, runs=2, seed=1)
    for run in found.numpy():  # the same partition up to renaming
        assert len({(a, b) for a, b in zip(run, labels)}) == 3
    mixed = labels.copy()
    mixed[::2] = -1  # unknown labels neither vote nor count
    assert knn_accuracy(torch.nn.functional.normalize(x, dim=1), torch.as_tensor(mixed), k=3) == 1.0
