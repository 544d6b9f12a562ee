"""Instance Recognition (Wu et al. 2018) and Local Aggregation (Zhuang et al. 2019) objectives as pure functions, and
the cross-entropy of the supervised baseline.

Every function takes the current embeddings ``v (B, D)`` (unit rows, with gradients), the memory bank ``(N, D)``
(unit rows, no gradients) and the batch's video indices ``(B,)``; randomness (NCE noise draws) is passed in, so the
functions are deterministic and testable against a NumPy reference. Logits are computed in float32 whatever the
autocast state, because bf16 cannot resolve differences of exp(v.b / 0.07).
"""

import math

import torch
import torch.nn.functional as F


def _check(v: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor) -> None:
    if v.ndim != 2 or bank.ndim != 2 or v.shape[1] != bank.shape[1]:
        raise ValueError(f"embeddings {tuple(v.shape)} and bank {tuple(bank.shape)} must be (B, D) and (N, D)")
    if indices.shape != (v.shape[0],):
        raise ValueError(f"indices shape {tuple(indices.shape)} must be ({v.shape[0]},)")


def draw_noise(batch: int, n: int, negatives: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform noise indices ``(batch, negatives)`` int64 in ``[0, n)``, drawn with replacement as in Wu et al."""
    if negatives < 1 or n < 1:
        raise ValueError(f"need negatives >= 1 and a non-empty bank, got negatives={negatives}, n={n}")
    return torch.randint(0, n, (batch, negatives), generator=generator)


def nce_log_z(v: torch.Tensor, bank: torch.Tensor, noise: torch.Tensor, tau: float) -> torch.Tensor:
    """Batch estimate of ``log Z``, ``Z = N * mean_{i, k} exp(v_i . b_{noise[i, k]} / tau)``; scalar, no gradient.

    This is the Monte-Carlo estimate of ``Z = sum_j exp(v . b_j / tau)`` from uniform noise draws that Wu et al. make on
    their first batch (they also include the positive column; we use the noise columns only, which is unbiased).
    """
    with torch.no_grad(), torch.autocast(v.device.type, enabled=False):
        s = torch.einsum("bd,bkd->bk", v.float(), bank[noise].float()) / tau  # (B, K)
        return torch.logsumexp(s.flatten(), 0) - math.log(s.numel()) + math.log(bank.shape[0])


def ir_nce_loss(
    v: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor, noise: torch.Tensor, log_z: torch.Tensor | float,
    tau: float = 0.07,
) -> torch.Tensor:
    """NCE loss of non-parametric instance discrimination (Wu et al. 2018, eq. 6-8); scalar.

    With ``P(i|v) = exp(v . b_i / tau) / Z``, K = ``noise.shape[1]`` uniform noise samples (``P_n = 1/N``) and
    ``h(i, v) = P(i|v) / (P(i|v) + K P_n)``::

        loss = -mean_i [ log h(indices_i, v_i) + sum_k log(1 - h(noise_ik, v_i)) ]

    computed in log space (``a = log(K/N)``, ``log h = s - logaddexp(s, a)``, ``log(1 - h) = a - logaddexp(s, a)``).

    Args:
        v: embeddings ``(B, D)``, with gradients.
        bank: memory bank ``(N, D)``; the positive is the bank row of the same video, as in Wu et al.
        indices: video indices ``(B,)``.
        noise: noise indices ``(B, K)`` (see :func:`draw_noise`).
        log_z: the normalisation constant ``log Z`` (a running estimate; see :func:`nce_log_z`), treated as a constant.
    """
    _check(v, bank, indices)
    if noise.ndim != 2 or noise.shape[0] != v.shape[0]:
        raise ValueError(f"noise indices shape {tuple(noise.shape)} must be ({v.shape[0]}, K)")
    with torch.autocast(v.device.type, enabled=False):
        v = v.float()
        log_z = torch.as_tensor(log_z, dtype=torch.float32, device=v.device).detach()
        a = math.log(noise.shape[1] / bank.shape[0])
        s_pos = (v * bank[indices].float()).sum(1) / tau - log_z  # (B,)
        s_noise = torch.einsum("bd,bkd->bk", v, bank[noise].float()) / tau - log_z  # (B, K)
        a_t = torch.full_like(s_pos, a)
        log_h_pos = s_pos - torch.logaddexp(s_pos, a_t)
        log_not_h_noise = a - torch.logaddexp(s_noise, torch.full_like(s_noise, a))
        return -(log_h_pos + log_not_h_noise.sum(1)).mean()


def ir_softmax_loss(v: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Exact instance discrimination: ``-mean_i log softmax(v_i . bank^T / tau)[indices_i]``; scalar. For small N."""
    _check(v, bank, indices)
    with torch.autocast(v.device.type, enabled=False):
        logits = v.float() @ bank.float().T / tau  # (B, N)
        return F.cross_entropy(logits, indices)


def la_loss(
    v: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor, cluster_labels: torch.Tensor, k: int = 4096,
    tau: float = 0.07,
) -> torch.Tensor:
    """Local Aggregation loss (Zhuang et al. 2019); scalar.

    Background neighbours ``B_i``: the ``min(k, N)`` bank rows with the largest inner product with ``v_i``.
    Close neighbours ``C_i``: the rows that share a cluster with video ``indices_i`` in ANY of the m clusterings::

        loss = -mean_i log( sum_{j in C_i & B_i} exp(v_i . b_j / tau) / sum_{j in B_i} exp(v_i . b_j / tau) )

    Rows whose ``C_i & B_i`` is empty carry no signal (Zhuang et al. add 1e-7 inside the log, which gives them a
    constant loss and zero gradient); they are left out of the mean, and a batch with no such row gives 0.

    Args:
        v: embeddings ``(B, D)``, with gradients.
        bank: memory bank ``(N, D)``.
        indices: video indices ``(B,)``.
        cluster_labels: ``(m, N)`` int cluster id of every video in each of m clusterings (``(N,)`` is one clustering).
        k: number of background neighbours, clipped to N.
    """
    _check(v, bank, indices)
    if cluster_labels.ndim == 1:
        cluster_labels = cluster_labels[None]
    if cluster_labels.ndim != 2 or cluster_labels.shape[1] != bank.shape[0]:
        raise ValueError(f"cluster_labels shape {tuple(cluster_labels.shape)} must be (m, {bank.shape[0]})")
    if k < 1:
        raise ValueError(f"la_k {k} must be at least 1")
    k = min(k, bank.shape[0])
    with torch.autocast(v.device.type, enabled=False):
        v = v.float()
        with torch.no_grad():
            neighbours = (v @ bank.float().T).topk(k, dim=1).indices  # (B, k)
            labels = cluster_labels.to(v.device)
            close = (labels[:, neighbours] == labels[:, indices][:, :, None]).any(0)  # (B, k) over m clusterings
        s = torch.einsum("bd,bkd->bk", v, bank[neighbours].float()) / tau  # (B, k)
        log_den = torch.logsumexp(s, 1)
        log_num = torch.logsumexp(s.masked_fill(~close, float("-inf")), 1)
        valid = close.any(1)
        if not bool(valid.any()):
            return v.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) intact
        return -(log_num[valid] - log_den[valid]).mean()


def supervised_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the supervised baseline, ``-mean_i log softmax(logits_i)[targets_i]``; scalar.

    Rows whose target is negative (a video without a label) are left out of the mean; a batch with none labelled gives
    0 (with the graph kept, as :func:`la_loss` does).

    Args:
        logits: class scores ``(B, C)``, with gradients.
        targets: ``(B,)`` int class indices in ``[0, C)``, or < 0 for unlabelled.
    """
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must be (B, C) and (B,)")
    if bool((targets >= logits.shape[1]).any()):
        raise ValueError(f"targets up to {int(targets.max())} for {logits.shape[1]} classes")
    with torch.autocast(logits.device.type, enabled=False):
        logits = logits.float()
        labelled = targets >= 0
        if not bool(labelled.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[labelled], targets[labelled].long())
