"""Frozen-network evaluations: clip features, the (few-shot) linear probe, the weighted kNN and the network's own
K-means against the labels.

The few-shot protocol draws ``n`` training videos per class in two ways: the authors' "first ``n`` per class" (in the
order the caller gives, e.g. the split file's) and seeded random draws, whose accuracies are averaged over seeds and
reported with their spread. The probe is a multinomial logistic regression (scikit-learn, L-BFGS) on standardised
features.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from idtprior.evaluation.clips import eval_loader, resolve_device
from idtprior.evaluation.metrics import cluster_purity, nmi
from idtprior.models.clustering import kmeans, knn_classify
from idtprior.models.data import ClipSource
from idtprior.models.resnet3d import ResNet3d

FEATURES = ("backbone", "embedding")


@torch.no_grad()
def extract_features(
    encoder: ResNet3d, source: ClipSource, ids: Sequence[int] | None = None, clip_length: int = 16,
    crop_size: int = 112, clips: int = 5, seed: int = 0, frame_step: int = 1, batch_size: int = 64,
    kind: str = "backbone", device: str | torch.device | None = None, num_workers: int = 0,
) -> np.ndarray:
    """Features ``(len(ids), D)`` float32 of a frozen encoder: the mean over ``clips`` seeded random centre-crop clips.

    ``kind="backbone"``: the pooled features before the embedding head (``D = encoder.feature_dim``), what the linear
    probe reads; ``"embedding"``: the L2-normalised embedding (``D = encoder.embed_dim``) the kNN monitor of
    pretraining reads, averaged over clips and normalised again. ``ids``: indices into ``source`` (None: all).
    """
    if kind not in FEATURES:
        raise ValueError(f"feature kind {kind!r} is not one of {FEATURES}")
    return extract_feature_kinds(encoder, source, ids, clip_length, crop_size, clips, seed, frame_step, batch_size,
                                 (kind,), device, num_workers)[kind]


@torch.no_grad()
def extract_feature_kinds(
    encoder: ResNet3d, source: ClipSource, ids: Sequence[int] | None = None, clip_length: int = 16,
    crop_size: int = 112, clips: int = 5, seed: int = 0, frame_step: int = 1, batch_size: int = 64,
    kinds: Sequence[str] = FEATURES, device: str | torch.device | None = None, num_workers: int = 0,
) -> dict[str, np.ndarray]:
    """:func:`extract_features` of several ``kinds`` from one pass over the clips: ``{kind: (len(ids), D)}``, each
    equal to its own call's (the embedding is the encoder's forward on the same backbone features)."""
    bad = [k for k in kinds if k not in FEATURES]
    if bad or not kinds:
        raise ValueError(f"feature kinds {list(kinds)} must be some of {FEATURES}")
    ids = list(range(len(source))) if ids is None else [int(i) for i in ids]
    dev = resolve_device(device)
    was_training = encoder.training
    encoder.eval().to(dev)
    dims = {"backbone": encoder.feature_dim, "embedding": encoder.embed_dim}
    out = {k: np.zeros((len(ids), dims[k]), np.float32) for k in kinds}
    row = 0
    try:
        for _, batch in eval_loader(source, ids, clip_length, crop_size, clips, seed, max(1, batch_size // clips),
                                    frame_step, num_workers):  # (B, clips, 3, T, H, W)
            b = batch.shape[0]
            backbone = encoder.features(batch.flatten(0, 1).to(dev))  # (B * clips, C)
            per_clip = {"backbone": backbone}
            if "embedding" in out:  # what encoder(x) computes from these features
                per_clip["embedding"] = F.normalize(encoder.fc(backbone), dim=1)
            for k in out:
                f = per_clip[k].float().view(b, clips, -1).mean(1)
                if k == "embedding":
                    f = F.normalize(f, dim=1)
                out[k][row : row + b] = f.cpu().numpy()
            row += b
    finally:
        encoder.train(was_training)
    return out


def few_shot_indices(labels: Sequence[int] | np.ndarray, n: int | None, mode: str = "first", seed: int = 0
                     ) -> np.ndarray:
    """Indices (sorted, int64) of ``n`` videos per class of ``labels (N,)`` (labels < 0 are never picked).

    ``mode="first"``: each class's first ``n`` rows in the given order (the authors' protocol); ``"random"``: ``n`` rows
    per class drawn without replacement, seeded by ``seed``. ``n=None`` takes every labelled row; a class with fewer
    than ``n`` rows gives all it has.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be (N,), got shape {labels.shape}")
    if mode not in ("first", "random"):
        raise ValueError(f"few-shot mode {mode!r} is not 'first' or 'random'")
    if n is not None and n < 1:
        raise ValueError(f"few-shot n {n} must be at least 1 (or None for all)")
    rng = np.random.default_rng([seed, 5])
    picked = []
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        if n is None or n >= len(members):
            picked.append(members)
        elif mode == "first":
            picked.append(members[:n])
        else:
            picked.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, np.int64)


@dataclass
class ProbeResult:
    accuracy: float  # on the labelled test rows; nan when none is labelled
    predictions: np.ndarray  # (M,) int64
    probabilities: np.ndarray  # (M, C) float32, columns = classes (the distinct training labels, sorted)
    classes: np.ndarray  # (C,) the training labels in column order


def linear_probe(
    train_x: np.ndarray, train_y: Sequence[int] | np.ndarray, test_x: np.ndarray,
    test_y: Sequence[int] | np.ndarray | None = None, c: float = 1.0, max_iter: int = 1000, seed: int = 0,
) -> ProbeResult:
    """Multinomial logistic regression on standardised features (scaled by the training rows' mean and std).

    ``train_x (N, D)``, ``train_y (N,)`` int, ``test_x (M, D)``, ``test_y (M,)`` (< 0: not counted); ``c`` is the
    inverse L2 strength (scikit-learn's ``C``). A single training class predicts that class.
    """
    from sklearn.linear_model import LogisticRegression

    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y = np.asarray(train_y, np.int64)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"probe features {train_x.shape} and {test_x.shape} must be (N, D) and (M, D)")
    if train_y.shape != (train_x.shape[0],) or train_x.shape[0] < 1:
        raise ValueError(f"probe train labels {train_y.shape} must be ({train_x.shape[0]},) with at least one row")
    mean, std = train_x.mean(0), train_x.std(0)
    std[std == 0] = 1.0
    a, b = (train_x - mean) / std, (test_x - mean) / std
    classes = np.unique(train_y)
    if len(classes) == 1:
        probs = np.ones((len(b), 1), np.float32)
    else:
        model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
        model.fit(a, train_y)
        probs = model.predict_proba(b).astype(np.float32)
    predictions = classes[probs.argmax(1)].astype(np.int64)
    accuracy = float("nan")
    if test_y is not None:
        test_y = np.asarray(test_y, np.int64)
        if test_y.shape != (test_x.shape[0],):
            raise ValueError(f"probe test labels {test_y.shape} must be ({test_x.shape[0]},)")
        keep = test_y >= 0
        if keep.any():
            accuracy = float((predictions[keep] == test_y[keep]).mean())
    return ProbeResult(accuracy, predictions, probs, classes)


SHOTS: tuple[int | None, ...] = (1, 5, 10, 20, None)
"""The paper's few-shot sizes: videos per class (None = all)."""


def few_shot_table(
    train_x: np.ndarray, train_y: Sequence[int] | np.ndarray, test_x: np.ndarray, test_y: Sequence[int] | np.ndarray,
    shots: Sequence[int | None] = SHOTS, modes: Sequence[str] = ("first", "random"), seeds: Sequence[int] = (0, 1, 2),
    c: float = 1.0, max_iter: int = 1000,
) -> list[dict]:
    """Linear-probe accuracy per ``(shots, mode)``: rows ``{"shots": n or "all", "mode", "mean", "std", "runs":
    [accuracy per seed]}``. "first" and "all" do not depend on the seed and run once (std 0)."""
    train_y = np.asarray(train_y)
    done: dict[bytes, float] = {}  # "all" is the same probe in every mode: fit it once
    rows = []
    for n in shots:
        for mode in modes:
            run_seeds = list(seeds) if (mode == "random" and n is not None) else [0]
            accs = []
            for s in run_seeds:
                idx = few_shot_indices(train_y, n, mode, s)
                key = idx.tobytes() + bytes([s % 256])
                if key not in done:
                    done[key] = linear_probe(train_x[idx], train_y[idx], test_x, test_y, c, max_iter, s).accuracy
                accs.append(done[key])
            rows.append({"shots": "all" if n is None else int(n), "mode": mode, "mean": float(np.mean(accs)),
                         "std": float(np.std(accs)), "runs": [float(a) for a in accs]})
    return rows


def knn_probe(train_x: np.ndarray, train_y: Sequence[int] | np.ndarray, test_x: np.ndarray,
              test_y: Sequence[int] | np.ndarray, k: int = 20, tau: float = 0.07) -> float:
    """Weighted kNN accuracy (``idtprior.models.clustering.knn_classify``) of L2-normalised features."""
    tx = F.normalize(torch.as_tensor(np.asarray(train_x, np.float32)), dim=1)
    qx = F.normalize(torch.as_tensor(np.asarray(test_x, np.float32)), dim=1)
    return knn_classify(tx, torch.as_tensor(np.asarray(train_y, np.int64)), qx,
                        torch.as_tensor(np.asarray(test_y, np.int64)), k=k, tau=tau)


def kmeans_agreement(features: np.ndarray, labels: Sequence | np.ndarray, k: int, runs: int = 1, seed: int = 0,
                     iters: int = 20) -> dict[str, float]:
    """The network's own clusters against the labels: K-means (the pipeline's, ``models.clustering.kmeans``) of the
    L2-normalised ``features (N, D)`` into ``k`` clusters, ``runs`` seeded runs; ``{"nmi", "purity"}`` averaged over
    the runs (rows labelled None / < 0 are clustered but not scored)."""
    x = F.normalize(torch.as_tensor(np.asarray(features, np.float32)), dim=1)
    assignments = kmeans(x, k, runs=runs, seed=seed, iters=iters).cpu().numpy()  # (runs, N)
    scores = [(nmi(a, labels), cluster_purity(a, labels)) for a in assignments]
    return {"nmi": float(np.mean([s[0] for s in scores])), "purity": float(np.mean([s[1] for s in scores]))}
