"""Finetuning a pretrained 3D ResNet on a labelled set: the paper's protocol, as plain PyTorch loops.

SGD (lr 0.1, momentum 0.9), the lr divided by 10 whenever the validation loss stops improving (:class:`Plateau`), the
validation videos split off the TRAINING videos (stratified, seeded; the test videos are read only after training),
the stem and the first residual stage frozen for UCF101-like sets (``frozen_blocks=1``), up to the second stage for
HMDB51-like sets (``frozen_blocks=2``). Training clips are the pretraining's clips (``ClipDataset``: multi-scale
crops and flips; no colour jitter or grayscale by default); the test score of a video is the mean softmax over
``test_clips`` seeded random clips, each the centre crop (:mod:`idtprior.evaluation.clips`).

Frozen parts are frozen whole: no gradient and their BatchNorm layers stay in eval mode, so their running statistics
do not move either.
"""

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from idtprior.evaluation.clips import eval_loader, resolve_device
from idtprior.models.data import SCALES, ClipDataset, ClipSource, collate_clips
from idtprior.models.resnet3d import ResNet3d

FROZEN_PARTS: dict[int, tuple[str, ...]] = {
    0: (),
    1: ("conv1", "bn1", "layer1"),
    2: ("conv1", "bn1", "layer1", "layer2"),
    3: ("conv1", "bn1", "layer1", "layer2", "layer3"),
    4: ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"),
}
"""The encoder modules frozen by ``frozen_blocks`` (their names in :class:`ResNet3d`)."""


@dataclass(frozen=True)
class FinetuneParams:
    """Finetuning settings; lr, momentum, the x0.1 plateau decay and the 5 test clips are the paper's."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4  # not on BatchNorm parameters and biases; as the pretraining
    epochs: int = 100  # at most; training also ends at the plateau after the lr_drops-th drop
    lr_drops: int = 3
    plateau_patience: int = 3  # epochs without validation improvement tolerated before the lr drops
    plateau_threshold: float = 1e-4  # relative improvement of the validation loss that counts
    lr_factor: float = 0.1
    batch_size: int = 64
    clip_length: int = 16  # the paper's Table 3 evaluates 8, 16 and 32
    frame_step: int = 1
    crop_size: int = 112
    crop_scales: tuple[float, ...] = SCALES
    hflip: bool = True
    dropout: float = 0.0  # before the classifier
    frozen_blocks: int = 1  # 0 none, 1 conv1 + layer1 (UCF101), 2 up to layer2 (HMDB51); see FROZEN_PARTS
    val_fraction: float = 0.1  # of each class's training videos
    test_clips: int = 5
    seed: int = 0
    num_workers: int = 0
    device: str | None = None  # None: CUDA when available

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "clip_length", "frame_step", "crop_size", "test_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"finetune {name} {getattr(self, name)} must be at least 1")
        for name in ("lr_drops", "plateau_patience", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"finetune {name} {getattr(self, name)} must be >= 0")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"finetune lr {self.lr} must be > 0, weight_decay {self.weight_decay} >= 0 and momentum "
                             f"{self.momentum} in [0, 1)")
        if not 0 < self.lr_factor < 1 or self.plateau_threshold < 0:
            raise ValueError(f"finetune lr_factor {self.lr_factor} must be in (0, 1) and plateau_threshold "
                             f"{self.plateau_threshold} >= 0")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"finetune val_fraction {self.val_fraction} and dropout {self.dropout} must be in [0, 1)")
        if self.frozen_blocks not in FROZEN_PARTS:
            raise ValueError(f"finetune frozen_blocks {self.frozen_blocks} is not one of {sorted(FROZEN_PARTS)}")
        if not self.crop_scales or any(not 0 < float(s) <= 1 for s in self.crop_scales):
            raise ValueError(f"finetune crop_scales {tuple(self.crop_scales)} must be in (0, 1]")
        object.__setattr__(self, "crop_scales", tuple(float(s) for s in self.crop_scales))


class Plateau:
    """The lr schedule "x ``factor`` when the monitored loss stops improving" (as ``ReduceLROnPlateau``, mode min,
    relative threshold, no cooldown): a value counts as better when below ``best * (1 - threshold)``; after more than
    ``patience`` epochs in a row that are not better, the lr is multiplied by ``factor`` and the count restarts."""

    def __init__(self, lr: float, factor: float = 0.1, patience: int = 3, threshold: float = 1e-4) -> None:
        self.lr, self.factor, self.patience, self.threshold = float(lr), float(factor), int(patience), float(threshold)
        self.best, self.bad_epochs, self.drops = float("inf"), 0, 0

    def step(self, value: float) -> float:
        """Record one epoch's ``value``; returns the lr for the next epoch."""
        if value < self.best * (1.0 - self.threshold):  # inf * (1 - t) = inf: the first finite value is better
            self.best, self.bad_epochs = float(value), 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.lr *= self.factor
            self.drops += 1
            self.bad_epochs = 0
        return self.lr


class FinetuneNet(nn.Module):
    """The encoder's pooled backbone features, dropout and a linear classifier: ``(B, 3, T, H, W) -> (B, classes)``
    logits. The embedding head of pretraining (``encoder.fc``) is not used."""

    def __init__(self, encoder: ResNet3d, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.encoder.features(x)))  # (B, classes)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns. Video ids are indices into the train / test sources."""

    test_probabilities: np.ndarray  # (N_test, C) float32: mean softmax over the test clips
    test_predictions: np.ndarray  # (N_test,) int64
    test_accuracy: float | None  # None when no test labels were given
    history: list[dict[str, float]]  # per epoch: epoch, loss, val_loss, val_accuracy, lr (the lr of that epoch)
    train_ids: np.ndarray  # (N_train',) int64: the videos trained on
    val_ids: np.ndarray  # (N_val,) int64: the training videos held out for the plateau schedule
    model: FinetuneNet = field(repr=False)


def split_validation(labels: Sequence[int] | np.ndarray, fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified seeded split of the labelled rows (label >= 0) of ``labels (N,)``: ``(train_ids, val_ids)``, both
    sorted int64. Each class gives ``round(fraction * count)`` videos to validation, at least one when it has two or
    more and ``fraction > 0``, never all of them."""
    labels = np.asarray(labels)
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction {fraction} must be in [0, 1)")
    rng = np.random.default_rng([seed, 11])
    val = []
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        n = int(round(fraction * len(members)))
        if fraction > 0 and len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        else:
            n = 0
        val.append(rng.permutation(members)[:n])
    val_ids = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    train_ids = np.setdiff1d(np.flatnonzero(labels >= 0), val_ids).astype(np.int64)
    return train_ids, val_ids


def _batches(ids: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """One epoch's batches of ``(index, epoch)`` keys, a permutation seeded by ``(seed, epoch)``; a last batch of one
    joins the previous one (BatchNorm cannot train on a single clip of 1x1x1 maps)."""
    order = np.random.default_rng([seed, epoch, 7]).permutation(ids)
    keys = [(int(i), epoch) for i in order]
    batches = [keys[s : s + batch_size] for s in range(0, len(keys), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


def _set_train_mode(model: FinetuneNet, frozen: tuple[str, ...]) -> None:
    model.train()
    for name in frozen:
        getattr(model.encoder, name).eval()


@torch.no_grad()
def predict_clips(model: nn.Module, source: ClipSource, ids: Sequence[int] | np.ndarray, clip_length: int,
                  crop_size: int, clips: int, seed: int, batch_size: int, device: torch.device, frame_step: int = 1,
                  num_workers: int = 0) -> np.ndarray:
    """Mean softmax ``(len(ids), C)`` float32 of ``model`` over ``clips`` seeded random centre-crop clips per video."""
    was_training = model.training
    model.eval()
    out = []
    loader = eval_loader(source, ids, clip_length, crop_size, clips, seed, batch_size // clips, frame_step, num_workers)
    for _, batch in loader:  # (B, clips, 3, T, H, W)
        b = batch.shape[0]
        logits = model(batch.flatten(0, 1).to(device))  # (B * clips, C)
        out.append(F.softmax(logits.float(), dim=1).view(b, clips, -1).mean(1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def finetune(
    encoder: ResNet3d,
    train_source: ClipSource,
    train_labels: Sequence[int] | np.ndarray,
    test_source: ClipSource,
    test_labels: Sequence[int] | np.ndarray | None = None,
    params: FinetuneParams = FinetuneParams(),
    val_ids: Sequence[int] | None = None,
    n_classes: int | None = None,
    on_epoch: Callable[[dict[str, float]], Any] | None = None,
) -> FinetuneResult:
    """Finetune a copy of ``encoder`` (left untouched) with a new linear classifier, then score the test videos.

    Args:
        encoder: the pretrained :class:`ResNet3d` (e.g. ``idtprior.models.load_encoder(path)``).
        train_source, train_labels: training videos and their ``(N,)`` int labels in ``[0, C)`` (< 0: unlabelled,
            not used).
        test_source, test_labels: test videos, read only after training; labels ``(M,)`` (optional) for the accuracy.
        val_ids: indices into ``train_source`` held out for the plateau schedule; None: a stratified
            ``params.val_fraction`` of the training videos (:func:`split_validation`). With no validation videos the
            schedule follows the training loss.
        n_classes: C; None: ``max(train_labels) + 1``.
        on_epoch: called with each epoch's history row, as it ends (progress reporting).
    """
    train_labels = np.asarray(train_labels, dtype=np.int64)
    if train_labels.shape != (len(train_source),):
        raise ValueError(f"train labels shape {train_labels.shape} must be ({len(train_source)},), one per video")
    if test_labels is not None:
        test_labels = np.asarray(test_labels, dtype=np.int64)
        if test_labels.shape != (len(test_source),):
            raise ValueError(f"test labels shape {test_labels.shape} must be ({len(test_source)},), one per video")
    if not (train_labels >= 0).any():
        raise ValueError("finetune: no labelled training video")
    n_classes = int(train_labels.max()) + 1 if n_classes is None else int(n_classes)
    top = max(int(train_labels.max()), -1 if test_labels is None else int(test_labels.max(initial=-1)))
    if top >= n_classes:
        raise ValueError(f"label {top} does not fit n_classes {n_classes}")
    p = params
    if val_ids is None:
        train_ids, val = split_validation(train_labels, p.val_fraction, p.seed)
    else:
        val = np.unique(np.asarray(val_ids, dtype=np.int64))
        bad = val[(val < 0) | (val >= len(train_source))]
        if bad.size:
            raise ValueError(f"validation ids {bad[:5].tolist()} are not training videos (0..{len(train_source) - 1})")
        val = val[train_labels[val] >= 0]
        train_ids = np.setdiff1d(np.flatnonzero(train_labels >= 0), val).astype(np.int64)
    if train_ids.size < 2:
        raise ValueError(f"finetune: {train_ids.size} training videos after the validation split, need at least 2")

    device = resolve_device(p.device)
    frozen = FROZEN_PARTS[p.frozen_blocks]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(p.seed)
        model = FinetuneNet(copy.deepcopy(encoder), n_classes, p.dropout).to(device)
        for name in frozen:
            for q in getattr(model.encoder, name).parameters():
                q.requires_grad_(False)
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for q in model.parameters():
            if q.requires_grad:
                (no_decay if q.ndim <= 1 else decay).append(q)
        optimizer = torch.optim.SGD([{"params": decay, "weight_decay": p.weight_decay},
                                     {"params": no_decay, "weight_decay": 0.0}], lr=p.lr, momentum=p.momentum)
        schedule = Plateau(p.lr, p.lr_factor, p.plateau_patience, p.plateau_threshold)
        dataset = ClipDataset(train_source, p.clip_length, p.crop_size, train=True, seed=p.seed, scales=p.crop_scales,
                              grayscale_p=0.0, jitter=0.0, flip=p.hflip, frame_step=p.frame_step)
        y_all = torch.as_tensor(train_labels)
        history: list[dict[str, float]] = []
        for epoch in range(p.epochs):
            lr = schedule.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            _set_train_mode(model, frozen)
            loader = DataLoader(dataset, batch_sampler=_batches(train_ids, p.batch_size, p.seed, epoch),
                                num_workers=p.num_workers, collate_fn=collate_clips)
            total, seen = 0.0, 0
            for indices, clips in loader:
                loss = F.cross_entropy(model(clips.to(device)), y_all[indices].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(indices)
                seen += len(indices)
            row = {"epoch": float(epoch), "loss": total / max(seen, 1), "lr": lr,
                   "val_loss": float("nan"), "val_accuracy": float("nan")}
            if val.size:
                # one centre-crop clip per validation video (seeded start): a cheap, stable signal for the schedule
                probs = predict_clips(model, train_source, val, p.clip_length, p.crop_size, 1, p.seed, p.batch_size,
                                      device, p.frame_step, p.num_workers)
                truth = train_labels[val]
                row["val_loss"] = float(-np.log(np.maximum(probs[np.arange(len(val)), truth], 1e-12)).mean())
                row["val_accuracy"] = float((probs.argmax(1) == truth).mean())
            history.append(row)
            if on_epoch is not None:
                on_epoch(dict(row))
            schedule.step(row["val_loss"] if val.size else row["loss"])
            if schedule.drops > p.lr_drops:
                break
        test_ids = np.arange(len(test_source))
        probs = predict_clips(model, test_source, test_ids, p.clip_length, p.crop_size, p.test_clips, p.seed,
                              max(p.batch_size, p.test_clips), device, p.frame_step, p.num_workers)
    if probs.size == 0:
        probs = np.zeros((0, n_classes), np.float32)
    predictions = probs.argmax(1).astype(np.int64)
    accuracy = None
    if test_labels is not None and (test_labels >= 0).any():
        keep = test_labels >= 0
        accuracy = float((predictions[keep] == test_labels[keep]).mean())
    return FinetuneResult(probs, predictions, accuracy, history, train_ids, val, model.cpu())
