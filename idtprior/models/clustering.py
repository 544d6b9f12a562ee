"""Cluster labels for Local Aggregation, and a kNN monitor of the memory bank.

``kmeans`` uses ``idtprior.encoding.kmeans`` (the pipeline's K-means) for CPU tensors and a small seeded Lloyd in
torch for CUDA tensors (and when the encoding package is missing). ``cluster_bank`` and ``cluster_joint`` are the per-epoch cluster sources ``bank`` (plain
Video LA) and ``joint`` (K-means on the concatenation of the bank and the IDT sketch: the paper's final tuning step).
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def block_rows(columns: int) -> int:
    """Rows per block of a ``(rows, columns)`` float32 distance or similarity matrix of at most 256 MB."""
    return max(1, 2**26 // columns)


def kpp_subsample_rows(n: int, k: int) -> int:
    """Rows of the seeded subsample :func:`lloyd_kmeans` draws its k-means++ seeds from: max(8k, 4096), at most n."""
    return min(n, max(8 * k, 4096))


def _chunked_argmin(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid ``(N,)`` and its squared distance ``(N,)`` for ``x (N, D)``, ``centroids (K, D)``."""
    chunk = block_rows(centroids.shape[0])
    c2 = (centroids * centroids).sum(1)  # (K,)
    labels, dists = [], []
    for start in range(0, x.shape[0], chunk):
        xc = x[start : start + chunk]
        d = c2[None, :] - 2.0 * xc @ centroids.T  # (n, K), |x|^2 dropped: constant per row
        dmin, arg = d.min(1)
        labels.append(arg)
        dists.append(dmin + (xc * xc).sum(1))
    return torch.cat(labels), torch.cat(dists)


def _kmeans_plusplus(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeds ``(k, D)`` drawn from a seeded subsample of ``max(8k, 4096)`` rows of ``x (N, D)``."""
    n = x.shape[0]
    sub = x[torch.randperm(n, generator=g)[: kpp_subsample_rows(n, k)].to(x.device)]  # (n', D)
    chosen = [int(torch.randint(sub.shape[0], (1,), generator=g))]
    d2 = ((sub - sub[chosen[0]]) ** 2).sum(1)  # (n',)
    for _ in range(1, k):
        total = d2.sum()
        if float(total) <= 0:  # fewer distinct rows than k: fill with unused rows
            rest = [i for i in torch.randperm(sub.shape[0], generator=g).tolist() if i not in set(chosen)]
            chosen += rest[: k - len(chosen)]
            break
        # D^2 sampling with the CPU generator, valid for CUDA tensors too: invert the cumulative distribution
        u = float(torch.rand(1, generator=g)) * float(total)
        j = min(int(torch.searchsorted(d2.cumsum(0), torch.tensor([u], device=x.device, dtype=d2.dtype))),
                sub.shape[0] - 1)
        chosen.append(j)
        d2 = torch.minimum(d2, ((sub - sub[j]) ** 2).sum(1))
    return sub[torch.tensor(chosen, device=x.device)].clone()


def lloyd_kmeans(
    x: torch.Tensor, k: int, runs: int = 1, seed: int = 0, iters: int = 20
) -> tuple[torch.Tensor, torch.Tensor]:
    """``runs`` independent seeded Lloyd K-means of ``x (N, D)``: labels ``(runs, N)`` int64, centroids ``(runs, k, D)``.

    Each run starts from k-means++ seeds (on a subsample); an emptied cluster is re-seeded with the row farthest from
    its centroid, so every run returns exactly k non-empty clusters when N has at least k distinct rows.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans input must be (N, D), got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"n_clusters {k} must be in [1, {n}] (the number of rows)")
    if runs < 1 or iters < 0:
        raise ValueError(f"kmeans runs {runs} must be >= 1 and iters {iters} >= 0")
    x = x.float()
    all_labels, all_centroids = [], []
    for r in range(runs):
        g = torch.Generator().manual_seed(seed * 1000003 + r)
        centroids = _kmeans_plusplus(x, k, g)  # (k, D)
        labels, dist2 = _chunked_argmin(x, centroids)
        for _ in range(iters):
            counts = torch.bincount(labels, minlength=k)  # (k,)
            sums = torch.zeros_like(centroids).index_add_(0, labels, x)
            empty = counts == 0
            centroids = sums / counts.clamp(min=1)[:, None].to(x.dtype)
            if bool(empty.any()):
                far = dist2.topk(int(empty.sum())).indices
                centroids[empty] = x[far]
            new_labels, dist2 = _chunked_argmin(x, centroids)
            if torch.equal(new_labels, labels) and not bool(empty.any()):
                break
            labels = new_labels
        all_labels.append(labels)
        all_centroids.append(centroids)
    return torch.stack(all_labels), torch.stack(all_centroids)


def kmeans(x: torch.Tensor, k: int, runs: int = 1, seed: int = 0, iters: int = 20) -> torch.Tensor:
    """Labels ``(runs, N)`` int64 on ``x``'s device.

    CUDA tensors stay on the GPU with :func:`lloyd_kmeans` (a per-epoch K=6000 clustering of the bank would take
    minutes on the host); CPU tensors go to ``idtprior.encoding.kmeans``'s NumPy backend when importable (never
    faiss because it happens to be installed: its labels differ), else to :func:`lloyd_kmeans`.
    """
    if not x.is_cuda:
        pipeline_kmeans: Callable[..., tuple[Any, Any]] | None
        try:
            from idtprior.encoding import kmeans as pipeline_kmeans
        except ImportError:  # the encoding package is optional for the model cores
            pipeline_kmeans = None
        if pipeline_kmeans is not None:
            labels, _ = pipeline_kmeans(x.detach().float().numpy(), k, runs=runs, seed=seed, iters=iters,
                                        backend="numpy")
            return torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(runs, x.shape[0])
    return lloyd_kmeans(x, k, runs=runs, seed=seed, iters=iters)[0]


def cluster_bank(bank: torch.Tensor, k: int, runs: int, seed: int, iters: int = 20) -> torch.Tensor:
    """Cluster source ``bank``: K-means of the memory bank ``(N, D)`` -> labels ``(runs, N)``."""
    return kmeans(bank, k, runs=runs, seed=seed, iters=iters)


def cluster_joint(
    bank: torch.Tensor, idt_sketch: torch.Tensor, k: int, runs: int, seed: int, iters: int = 20,
    valid: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Cluster source ``joint``: K-means of ``[l2n(bank) | l2n(sketch)]`` ``(N, D + S)`` -> labels ``(runs, N)``.

    Both halves are L2-normalised per row so that the ConvNet and the IDT space weigh equally in the distance, whatever
    the sketch's scale. ``valid`` ``(N,)`` bool marks the rows that have a sketch (None: all): only those are
    clustered (labels ``0..k-1``); every other video gets a cluster of its own, label ``k + j`` for the j-th of them,
    in every run, as the ``idt`` source does. Their zero sketch rows would otherwise pull them together into clusters
    of their own kind, and make them each other's Local Aggregation positives.
    """
    n = bank.shape[0]
    if idt_sketch.ndim != 2 or idt_sketch.shape[0] != n:
        raise ValueError(f"idt_sketch shape {tuple(idt_sketch.shape)} must be ({n}, S)")
    joint = torch.cat([F.normalize(bank.float(), dim=1), F.normalize(idt_sketch.float().to(bank.device), dim=1)], 1)
    if valid is None:
        return kmeans(joint, k, runs=runs, seed=seed, iters=iters)
    valid = torch.as_tensor(np.asarray(valid), dtype=torch.bool)
    if valid.shape != (n,):
        raise ValueError(f"valid mask shape {tuple(valid.shape)} must be ({n},)")
    n_valid = int(valid.sum())
    if not 1 <= k <= n_valid:
        raise ValueError(f"n_clusters {k} must be in [1, {n_valid}] (the videos with an IDT sketch, of {n})")
    valid = valid.to(bank.device)
    labels = torch.empty(runs, n, dtype=torch.long, device=bank.device)
    labels[:, valid] = kmeans(joint[valid], k, runs=runs, seed=seed, iters=iters).to(bank.device)
    labels[:, ~valid] = k + torch.arange(n - n_valid, device=bank.device)
    return labels


def knn_accuracy(bank: torch.Tensor, labels: torch.Tensor, k: int = 20, tau: float = 0.07) -> float:
    """Leave-one-out weighted kNN accuracy of the bank ``(N, D)`` against ``labels (N,)`` (Wu et al.'s monitor).

    Each row votes with its k most similar other rows, weighted by ``exp(sim / tau)``; rows labelled < 0 neither vote
    nor count. Returns the fraction of labelled rows whose vote is their own label (nan when fewer than 2 are labelled).
    """
    if labels.shape != (bank.shape[0],):
        raise ValueError(f"labels shape {tuple(labels.shape)} must be ({bank.shape[0]},)")
    labels = labels.to(bank.device).long()
    keep = labels >= 0
    if int(keep.sum()) < 2:
        return float("nan")
    x, y = bank[keep].float(), labels[keep]
    n_classes = int(y.max()) + 1
    k = min(k, x.shape[0] - 1)
    chunk = block_rows(x.shape[0])  # also for N = 235k
    correct = 0
    for start in range(0, x.shape[0], chunk):
        sim = x[start : start + chunk] @ x.T  # (n, M)
        rows = torch.arange(sim.shape[0], device=x.device)
        sim[rows, rows + start] = float("-inf")  # leave one out
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], n_classes, device=x.device)
        votes.scatter_add_(1, y[top_idx], torch.exp(top_sim / tau))
        correct += int((votes.argmax(1) == y[start : start + chunk]).sum())
    return correct / x.shape[0]


def knn_classify(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, k: int = 20,
    tau: float = 0.07,
) -> float:
    """Weighted kNN accuracy of ``test_x (M, D)`` voting among ``train_x (N, D)`` (rows L2-normalised by the caller).

    The evaluation protocol of Wu et al. 2018 on held-out videos: each test row takes the k most similar train rows,
    weighted by ``exp(sim / tau)``; rows labelled < 0 neither vote nor count. nan when nothing is labelled.
    """
    if train_y.shape != (train_x.shape[0],) or test_y.shape != (test_x.shape[0],):
        raise ValueError(f"labels {tuple(train_y.shape)}, {tuple(test_y.shape)} must match the rows "
                         f"{train_x.shape[0]}, {test_x.shape[0]}")
    tr, te = train_y >= 0, test_y >= 0
    if int(tr.sum()) < 1 or int(te.sum()) < 1:
        return float("nan")
    x, y = train_x[tr].float(), train_y[tr].long()
    q, truth = test_x[te].float().to(x.device), test_y[te].long().to(x.device)
    n_classes = int(max(int(y.max()), int(truth.max()))) + 1
    k = min(k, x.shape[0])
    chunk = block_rows(x.shape[0])
    correct = 0
    for start in range(0, q.shape[0], chunk):
        top_sim, top_idx = (q[start : start + chunk] @ x.T).topk(k, dim=1)
        votes = torch.zeros(top_sim.shape[0], n_classes, device=x.device)
        votes.scatter_add_(1, y[top_idx], torch.exp(top_sim / tau))
        correct += int((votes.argmax(1) == truth[start : start + chunk]).sum())
    return correct / q.shape[0]
