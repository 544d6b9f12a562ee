"""The evaluate stage: the pretraining workspace's networks on this workspace's labelled splits, through the cores of
``idtprior.evaluation`` (finetuning, the few-shot linear probe, the weighted kNN and the network's own K-means).

One record per (network, protocol, clip length), chunk ``<network>.<protocol>.<clip length>``
(``pretrain_ir.finetune.16``), each keyed on its own inputs (``flows.evaluate.plan_evaluate``): the network's train
fingerprint, the evaluation videos' frames, labels and splits, the settings of that protocol and this stage's code. A
record holds no arrays (``version`` ""); ``record.videos == {"result": RESULT}``, RESULT a JSON dict:

- every protocol: ``status`` "ok", ``network``, ``protocol``, ``clip_length``, ``label_column``, ``classes`` (class
  names, index = class id), ``train_fingerprint`` (the network's, or ``scratch:<hash>``), ``seconds``;
- finetune: ``accuracy``, ``correct`` {video id: bool}, ``predictions`` {video id: class id}, ``history`` (per epoch:
  epoch, loss, val_loss, val_accuracy, lr), ``frozen_blocks``, ``n_train``, ``n_val``, ``n_test``;
- probe: ``table`` (rows shots, mode, mean, std, runs), ``correct`` {str(shots): {video id: bool}} of mode "first";
- knn: ``knn`` {label column: accuracy}, ``correct`` {label column: {video id: bool}}, ``nmi`` and ``purity``
  {label column: score} of K-means (k = that column's classes, seeded) of the test videos' embeddings.

The frames are read from THIS workspace (the evaluation workspace: ingest + decode of the labelled set); the pretraining
workspace is only read, for its encoders: evaluation videos never enter its IDT, clustering or training.
"""

import math
import time

import numpy as np
from prefect import task

from idtprior.config.training import EvaluateConfig, PretrainConfig
from idtprior.evaluation.finetune import FinetuneParams, finetune
from idtprior.evaluation.probe import (FEATURES, extract_feature_kinds, few_shot_indices, kmeans_agreement, knn_probe,
                                       linear_probe)
from idtprior.models.checkpoints import load_encoder
from idtprior.models.resnet3d import ResNet3d
from idtprior.runtime.keys import stamp
from idtprior.stages.pretrain.task import WorkspaceClipSource, encode_labels, initial_encoder
from idtprior.storage import ChunkRecord, Workspace
from idtprior.storage.frames import FrameStore, check_clip
from idtprior.storage.upstream import Upstream, check_upstream
from idtprior.testing import maybe_inject_fault

STAGE = "evaluate"
# The behaviour version of this module's stage(s), in their cache keys: bump it when results change (README: "Cache keys
# and upgrades"); tests/runtime/test_behaviour_pins.py says when.
BEHAVIOUR = {"evaluate": 1}
PROTOCOLS = ("finetune", "probe", "knn")
SCRATCH = "scratch"


def chunk_name(network: str, protocol: str, clip_length: int) -> str:
    """The record of one evaluation: ``<network>.<protocol>.<clip length>`` (``scratch.probe.16``)."""
    return f"{network}.{protocol}.{int(clip_length)}"


def read_evaluation(ws: Workspace) -> list[dict]:
    """Every committed RESULT of the workspace's evaluate records, in chunk-name order."""
    return [rec.videos["result"] for _, rec in sorted(ws.records(STAGE).items()) if "result" in rec.videos]


def network_encoder(encoder_path: str | None, scratch: PretrainConfig | None) -> ResNet3d:
    """The trained encoder exported at ``encoder_path``, or (None) the seeded random init of ``scratch``'s
    architecture: what every training stage without ``init_from`` starts from."""
    if encoder_path is not None:
        return load_encoder(encoder_path)
    if scratch is None:
        raise ValueError("evaluate: a network needs an encoder file or the scratch architecture")
    return initial_encoder(scratch)


def finetune_params(config: EvaluateConfig, clip_length: int, crop_size: int, frame_step: int,
                    crop_scales: tuple[float, ...], hflip: bool, frozen_blocks: int) -> FinetuneParams:
    """The finetuning core's parameters from the evaluate settings and what the plan resolved."""
    return FinetuneParams(
        lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, epochs=config.epochs,
        lr_drops=config.lr_drops, plateau_patience=config.plateau_patience, batch_size=config.batch_size,
        clip_length=clip_length, frame_step=frame_step, crop_size=crop_size, crop_scales=tuple(crop_scales),
        hflip=hflip, dropout=config.dropout, frozen_blocks=frozen_blocks, val_fraction=config.val_fraction,
        test_clips=config.test_clips, seed=config.seed, num_workers=config.num_workers, device=device_of(config))


def device_of(config: EvaluateConfig) -> str | None:
    return None if config.device == "auto" else config.device


def label_codes(values: dict[str, str], train_ids: list[str], test_ids: list[str]
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Class ids of the training and the test videos (-1: no value) and the class names, in sorted-name order over
    both splits."""
    codes, classes = encode_labels([values.get(v) for v in [*train_ids, *test_ids]])
    return codes[:len(train_ids)], codes[len(train_ids):], classes


def correct_map(ids: list[str], truth: np.ndarray, predictions: np.ndarray) -> dict[str, bool]:
    """{video id: prediction right} of the labelled videos."""
    return {v: bool(p == t) for v, t, p in zip(ids, truth, predictions) if t >= 0}


def _number(value: float, integer: bool = False) -> float | int | None:
    """A JSON-safe number: an int, a float, or None for nan (no validation video: no validation loss)."""
    if integer:
        return int(value)
    return None if math.isnan(value) else float(value)


def run_finetune(encoder: ResNet3d, train: WorkspaceClipSource, test: WorkspaceClipSource, y_train: np.ndarray,
                 y_test: np.ndarray, n_classes: int, params: FinetuneParams) -> dict:
    if (y_test < 0).all():
        raise ValueError("finetune: no test video has a label")
    r = finetune(encoder, train, y_train, test, y_test, params, n_classes=n_classes)
    return {"accuracy": float(r.test_accuracy), "correct": correct_map(test.video_ids, y_test, r.test_predictions),
            "predictions": {v: int(p) for v, p in zip(test.video_ids, r.test_predictions)},
            "history": [{k: _number(v, k == "epoch") for k, v in row.items()} for row in r.history],
            "frozen_blocks": params.frozen_blocks, "n_train": int(r.train_ids.size), "n_val": int(r.val_ids.size),
            "n_test": len(test.video_ids)}


def probe_result(train_x: np.ndarray, y_train: np.ndarray, test_x: np.ndarray, y_test: np.ndarray,
                 test_ids: list[str], config: EvaluateConfig) -> dict:
    """The few-shot table (``few_shot_table``'s rows: per shot count, per mode) and, for mode "first", each test
    video's correctness (for paired tests at a shot count)."""
    table, correct = [], {}
    seeds = list(range(config.seed, config.seed + config.shot_seeds))
    done: dict[bytes, tuple[float, np.ndarray]] = {}  # one fit per distinct training subset and seed

    def fit(idx: np.ndarray, seed: int) -> tuple[float, np.ndarray]:
        key = idx.tobytes() + bytes([seed % 256])
        if key not in done:
            r = linear_probe(train_x[idx], y_train[idx], test_x, y_test, config.probe_c, 1000, seed)
            done[key] = (r.accuracy, r.predictions)
        return done[key]

    for shots in config.shots:
        n = None if shots == "all" else int(shots)
        for mode in config.shot_modes:
            runs = seeds if (mode == "random" and n is not None) else [0]
            accs = []
            for s in runs:
                acc, predictions = fit(few_shot_indices(y_train, n, mode, s), s)
                accs.append(acc)
                if mode == "first":
                    correct[str(shots)] = correct_map(test_ids, y_test, predictions)
            table.append({"shots": shots if shots == "all" else int(shots), "mode": mode,
                          "mean": float(np.mean(accs)), "std": float(np.std(accs)), "runs": [float(a) for a in accs]})
    return {"table": table, "correct": correct}


def knn_result(train_x: np.ndarray, test_x: np.ndarray, train_ids: list[str], test_ids: list[str],
               label_sets: dict[str, dict[str, str]], config: EvaluateConfig) -> dict:
    """Per label column known for the test videos: weighted kNN accuracy (test videos voting among the training
    videos), each test video's correctness, and NMI / purity of K-means of the test embeddings."""
    out: dict[str, dict] = {"knn": {}, "correct": {}, "nmi": {}, "purity": {}}
    for column, values in sorted(label_sets.items()):
        y_train, y_test, classes = label_codes(values, train_ids, test_ids)
        if (y_test < 0).all() or (y_train < 0).all():
            continue
        out["knn"][column] = float(knn_probe(train_x, y_train, test_x, y_test, config.knn_k, config.knn_tau))
        # each test video alone against the same voters: the rows of one call are independent of each other
        out["correct"][column] = {
            v: knn_probe(train_x, y_train, test_x[i:i + 1], y_test[i:i + 1], config.knn_k, config.knn_tau) == 1.0
            for i, v in enumerate(test_ids) if y_test[i] >= 0}
        k = max(1, min(len(classes), len(test_ids)))
        scores = kmeans_agreement(test_x, y_test, k, runs=1, seed=config.seed)
        out["nmi"][column], out["purity"][column] = scores["nmi"], scores["purity"]
    return out


_FEATURES: dict[tuple, list[dict[str, np.ndarray]]] = {}
_FEATURES_KEPT = 8


def frozen_features(key: tuple | None, compute) -> list[dict[str, np.ndarray]]:
    """The frozen network's train and test features of every kind, computed once per process for ``key`` (the
    network, the videos' content key and the clip settings; None: not kept): the probe and the kNN read the same
    clips through the same network, so the second of them reuses the first one's pass (the last ``_FEATURES_KEPT``
    keys are kept)."""
    if key is None:
        return compute()
    if key not in _FEATURES:
        _FEATURES[key] = compute()
        while len(_FEATURES) > _FEATURES_KEPT:
            _FEATURES.pop(next(iter(_FEATURES)))
    return _FEATURES[key]


class MemoryClipSource(WorkspaceClipSource):
    """A :class:`WorkspaceClipSource` whose videos' frames are already in memory (read-only ``(T, H, W, 3)`` uint8
    arrays by video id): a clip is a slice. Forked loader workers inherit the arrays; pickled (spawned workers) it is
    a plain workspace source again, which reads the frame store."""

    def __init__(self, workspace: str, video_ids: list[str], num_frames: list[int],
                 arrays: dict[str, np.ndarray]) -> None:
        super().__init__(workspace, video_ids, num_frames)
        missing = [v for v in self.video_ids if v not in arrays]
        if missing:
            raise ValueError(f"no frames in memory for videos {missing[:5]}")
        self._frames_of: dict[str, np.ndarray] | None = arrays

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_frames_of": None}

    def read_clip(self, index: int, start: int, length: int) -> np.ndarray:
        if self._frames_of is None:
            return super().read_clip(index, start, length)
        video = self.video_ids[index]
        frames = self._frames_of[video]
        check_clip(video, start, length, frames.shape[0])
        return frames[start:start + length]


_FRAMES: dict[tuple[str, str], dict[str, np.ndarray]] = {}


def evaluation_sources(workspace: str, train_ids: list[str], train_frames: list[int], test_ids: list[str],
                       test_frames: list[int], videos_key: str | None, budget_bytes: int
                       ) -> tuple[WorkspaceClipSource, WorkspaceClipSource]:
    """The training and the test videos as clip sources. With ``videos_key`` (the plan's content key of the videos'
    frames, labels and splits) and their decoded frames within ``budget_bytes``, every video is read from the frame store
    once per process and key, and each evaluation of the stage slices the kept frames (one key is kept:
    :func:`release_frames` frees it); otherwise each source reads the store."""
    key = (workspace, videos_key or "")
    if videos_key is not None and budget_bytes > 0 and key not in _FRAMES:
        store = FrameStore(Workspace(workspace))
        ids = [*train_ids, *test_ids]
        if sum(store.nbytes(v) for v in ids) <= budget_bytes:  # from the records: no array is opened
            release_frames()
            arrays = {}
            for v, n in zip(ids, [*train_frames, *test_frames]):
                arrays[v] = store.read_clip(v, 0, int(n))
                arrays[v].flags.writeable = False
            _FRAMES[key] = arrays
    arrays = _FRAMES.get(key) if videos_key is not None and budget_bytes > 0 else None
    if arrays is None:
        return (WorkspaceClipSource(workspace, train_ids, train_frames),
                WorkspaceClipSource(workspace, test_ids, test_frames))
    return (MemoryClipSource(workspace, train_ids, train_frames, arrays),
            MemoryClipSource(workspace, test_ids, test_frames, arrays))


def release_frames() -> None:
    """Forget the frames :func:`evaluation_sources` keeps (the evaluate flow calls it when its evaluations end)."""
    _FRAMES.clear()


def evaluate_network(workspace: str, network: str, protocol: str, clip_length: int, train_fingerprint: str,
                     encoder_path: str | None, scratch: PretrainConfig | None, train_ids: list[str],
                     train_frames: list[int], test_ids: list[str], test_frames: list[int],
                     label_sets: dict[str, dict[str, str]], label_column: str, crop_size: int, frame_step: int,
                     crop_scales: tuple[float, ...], hflip: bool, frozen_blocks: int,
                     config: EvaluateConfig, videos_key: str | None = None) -> dict:
    """One evaluation's RESULT (see the module docstring). ``videos_key``: the evaluation videos' content key (the
    plan's hash of their frames, labels and splits); given, the probe and the kNN of one network share one pass of
    feature extraction in this process (:func:`frozen_features`)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"evaluate: protocol {protocol!r} is not one of {PROTOCOLS}")
    t0 = time.time()
    encoder = network_encoder(encoder_path, scratch)
    train, test = evaluation_sources(workspace, train_ids, train_frames, test_ids, test_frames, videos_key,
                                     config.frame_cache_mb * 2**20)
    y_train, y_test, classes = label_codes(label_sets.get(label_column, {}), train_ids, test_ids)
    result = {"status": "ok", "network": network, "protocol": protocol, "clip_length": int(clip_length),
              "label_column": label_column, "classes": classes, "train_fingerprint": train_fingerprint}
    if protocol == "finetune":
        params = finetune_params(config, clip_length, crop_size, frame_step, crop_scales, hflip, frozen_blocks)
        result.update(run_finetune(encoder, train, test, y_train, y_test, len(classes), params))
    else:
        kind = "backbone" if protocol == "probe" else "embedding"
        key = None if videos_key is None else (
            workspace, videos_key, train_fingerprint, encoder_path, int(clip_length), crop_size, frame_step,
            config.test_clips, config.seed, config.batch_size, config.device)
        feats = frozen_features(key, lambda: [
            extract_feature_kinds(encoder, source, None, clip_length, crop_size, config.test_clips, config.seed,
                                  frame_step, config.batch_size, FEATURES, device_of(config), config.num_workers)
            for source in (train, test)])
        feats = [f[kind] for f in feats]  # (N, D), (M, D) float32
        if protocol == "probe":
            result.update(probe_result(feats[0], y_train, feats[1], y_test, test_ids, config))
        else:
            result.update(knn_result(feats[0], feats[1], train_ids, test_ids, label_sets, config))
    result["seconds"] = round(time.time() - t0, 3)
    return result


@task(name="evaluate", task_run_name="{chunk}")
def evaluate_task(workspace: str, stage: str, chunk: str, fingerprint: str, network: str, protocol: str,
                  clip_length: int, train_fingerprint: str, encoder_path: str | None, scratch: PretrainConfig | None,
                  train_ids: list[str], train_frames: list[int], test_ids: list[str], test_frames: list[int],
                  label_sets: dict[str, dict[str, str]], label_column: str, crop_size: int, frame_step: int,
                  crop_scales: tuple[float, ...], hflip: bool, frozen_blocks: int,
                  config: EvaluateConfig, videos_key: str | None = None,
                  upstream: Upstream | None = None) -> ChunkRecord:
    """Evaluate one (network, protocol, clip length) and commit its record; a record with ``fingerprint`` already
    committed is returned as it is. ``upstream``: the records its key was planned from, checked before it reads any
    and again before it commits (``storage.upstream``)."""
    ws = Workspace(workspace)
    done = ws.read_record(stage, chunk)
    if done is not None and done.fingerprint == fingerprint:
        return done
    check_upstream(ws, upstream, f"{stage} {chunk}")
    t0 = time.time()
    result = evaluate_network(ws.url, network, protocol, clip_length, train_fingerprint, encoder_path, scratch,
                              train_ids, train_frames, test_ids, test_frames, label_sets, label_column, crop_size,
                              frame_step, crop_scales, hflip, frozen_blocks, config, videos_key)
    maybe_inject_fault(ws, stage, chunk)  # after the work, before the commit (tests and drills only)
    record = ChunkRecord(stage=stage, chunk=chunk, fingerprint=fingerprint, version="", videos={"result": result},
                         seconds=round(time.time() - t0, 3))
    check_upstream(ws, upstream, f"{stage} {chunk}")  # unchanged while it evaluated
    ws.commit(stamp(record, STAGE))
    return record
