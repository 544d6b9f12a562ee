"""Training stages (``pretrain_ir``, ``pretrain_la``, ``tune_joint``, and the baselines ``pretrain_la_bank`` and
``supervised``): the Lightning trainer of ``idtprior.models`` over the decoded frames of the workspace, with the IDT
cluster labels / sketches of the earlier stages, or (``supervised``) the training videos' labels.

A stage's run folder ``runs/<stage>/<train fingerprint>/`` holds the checkpoint of every epoch, so a killed run resumes
where it stopped; its record (``records/<stage>/all.json``) is committed only when training, the export of the encoder
and the (N, D) embeddings of every decoded video, and the kNN evaluation are done.

Two keys: the train fingerprint covers what training reads (frames, training ids, clusters or sketches, the stage it
starts from, the training settings, the code); the record's fingerprint adds what only the evaluation reads (labels,
splits, evaluated ids, ``knn_k``). A change of the second kind re-evaluates the trained run without training, and the
next stage, keyed on this one's train fingerprint, does not retrain either. A run whose settings differ only in a
larger ``epochs`` continues from the last checkpoint of the shorter run (``adopt_shorter_run``).
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from prefect import task

from idtprior.config.base import ConfigError
from idtprior.config.training import PretrainConfig, TrainStageConfig
from idtprior.models.checkpoints import checkpoint_problem, load_encoder
from idtprior.models.clustering import knn_accuracy, knn_classify
from idtprior.models.lightning import PretrainParams
from idtprior.models.resnet3d import ResNet3d
from idtprior.models.training import EPOCH_METRICS, EpochReporter, compute_embeddings, train
from idtprior.runtime.keys import stamp
from idtprior.runtime.progress import epoch_done_callback
from idtprior.stages.cluster import read_cluster_labels
from idtprior.stages.common import ALL
from idtprior.stages.encode import read_sketches
from idtprior.storage import ChunkRecord, Workspace
from idtprior.storage.frames import FrameStore
from idtprior.storage.integrity import array_options, reading
from idtprior.storage.upstream import Upstream, check_upstream
from idtprior.testing import fault_loss_from_env

TEST_SPLIT = "test"


class WorkspaceClipSource:
    """The decoded frames of ``video_ids`` as a clip source (``idtprior.models.ClipSource``); index i is
    ``video_ids[i]``. Pickles to DataLoader workers and DDP processes as the URL, the ids and the frame counts; each
    process opens the Zarr store itself."""

    def __init__(self, workspace: str, video_ids: list[str], num_frames: list[int]) -> None:
        if len(video_ids) != len(num_frames):
            raise ValueError(f"{len(video_ids)} video ids but {len(num_frames)} frame counts")
        short = [v for v, n in zip(video_ids, num_frames) if n < 1]
        if short:
            raise ValueError(f"videos without decoded frames cannot be trained on: {short[:5]}")
        self.workspace, self.video_ids, self.frames = workspace, list(video_ids), [int(n) for n in num_frames]
        self._store: FrameStore | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}

    def __len__(self) -> int:
        return len(self.video_ids)

    def num_frames(self, index: int) -> int:
        return self.frames[index]

    def read_clip(self, index: int, start: int, length: int) -> np.ndarray:
        if self._store is None:
            self._store = FrameStore(Workspace(self.workspace))
        return self._store.read_clip(self.video_ids[index], start, length)


def pretrain_params(shared: PretrainConfig, stage: TrainStageConfig, n_train: int, progress: bool = True,
                    strategy: str | None = None) -> PretrainParams:
    """The trainer's parameters from the shared section and the stage's own. ``strategy`` None: ``ddp_spawn`` for
    several devices (a stage inside a Prefect task); the entry point ``idtprior train-stage`` passes ``ddp``."""
    if stage.objective == "la" and stage.cluster_source in ("bank", "joint") and stage.n_clusters > n_train:
        raise ConfigError(f"n_clusters {stage.n_clusters} exceeds the {n_train} training videos")
    return PretrainParams(
        arch=shared.arch, width=shared.width, embed_dim=shared.embed_dim, clip_length=shared.clip_length,
        frame_step=shared.frame_step, crop_size=shared.crop_size, crop_scales=shared.crop_scales,
        grayscale_p=shared.grayscale_p,
        color_jitter=shared.color_jitter, hflip=shared.hflip, batch_size=shared.batch_size, lr=stage.lr,
        momentum=shared.momentum, weight_decay=shared.weight_decay, milestones=stage.lr_milestones,
        gamma=stage.lr_gamma, epochs=stage.epochs, tau=shared.tau, objective=stage.objective,
        negatives=shared.negatives, nce_z_momentum=shared.nce_z_momentum, ir_exact=shared.ir_exact,
        bank_momentum=shared.bank_momentum, la_k=shared.la_k,
        cluster_source=stage.cluster_source, n_clusters=stage.n_clusters, kmeans_runs=stage.kmeans_runs,
        kmeans_iters=stage.kmeans_iters, knn_k=shared.knn_k, seed=shared.seed, num_workers=shared.num_workers,
        augment_on=shared.augment_on, precision=shared.precision, accelerator=shared.accelerator,
        devices=shared.devices, num_nodes=shared.num_nodes,
        # Lightning's "ddp" re-launches the script; under Prefect the stage is a task in a thread, not a script
        strategy=strategy or ("ddp_spawn" if shared.devices > 1 else "auto"),
        drop_last=True, log_every_n_steps=10, progress_bar=progress,
    )


def train_config_fields(shared: PretrainConfig) -> dict:
    """The shared settings that change what training computes (not where it logs or how fast it loads)."""
    # launcher and slurm say where the processes run, not what they compute (num_nodes does: the global batch);
    # augment_on where the same clips are computed (equal to float32 rounding: tests/models/test_models_data.py)
    return shared.model_dump(mode="json", exclude={"eval_labels_file", "knn_k", "num_workers", "augment_on",
                                                   "launcher", "slurm"})


def idt_labels_for(ws: Workspace, train_ids: list[str], key: str | None = None, reader: str = "") -> np.ndarray:
    """The cluster stage's (m, N) labels, columns in ``train_ids`` order; a video without a cluster (no valid
    sketch) gets a cluster of its own, so it has no close neighbour but itself. ``key``: the cluster record's key the
    reader's was planned from (checked when given)."""
    labels, ids = read_cluster_labels(ws, key, reader)
    where = {v: i for i, v in enumerate(ids)}
    missing = [v for v in train_ids if v not in where]
    if missing:
        raise ConfigError(f"workspace {ws.url}: {len(missing)} training videos have no cluster label (e.g. "
                          f"{missing[0]}); rerun the cluster stage")
    out = labels[:, [where[v] for v in train_ids]].astype(np.int64)
    lonely = out < 0
    out[lonely] = out.max() + 1 + np.nonzero(lonely)[1]
    return out


def encode_labels(values: list[str | None]) -> tuple[np.ndarray, list[str]]:
    """Strings -> int codes in sorted-name order; None or '' -> -1 (unlabelled)."""
    names = sorted({v for v in values if v})
    code = {n: i for i, n in enumerate(names)}
    return np.array([code.get(v, -1) if v else -1 for v in values], np.int64), names


def supervised_labels(stage: str, label_sets: dict[str, dict[str, str]], column: str,
                      train_ids: list[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """The training videos of a supervised stage: those with a value in label set ``column`` (the manifest's
    ``label`` or a column of ``pretrain.eval_labels_file``), in ``train_ids`` order; their classes ``(n,)`` int64
    (codes in sorted-name order) and the class names. A ConfigError naming the column when no training video has one."""
    values = label_sets.get(column, {})
    labelled = [v for v in train_ids if values.get(v)]
    if not labelled:
        raise ConfigError(f"{stage}: label_column {column!r}: none of the {len(train_ids)} training videos has a label "
                          f"in it (label sets with values: {sorted(k for k, v in label_sets.items() if v)})")
    classes, names = encode_labels([values[v] for v in labelled])
    return labelled, classes, names


def knn_report(emb: np.ndarray, ids: list[str], splits: dict[str, str], label_sets: dict[str, dict[str, str]],
               k: int, tau: float) -> dict[str, float]:
    """Weighted kNN accuracy per label set: test-split videos voting among the others, or leave-one-out over all
    videos when no video is in the test split."""
    x = torch.from_numpy(np.asarray(emb, np.float32))
    x = torch.nn.functional.normalize(x, dim=1)
    test = np.array([splits.get(v) == TEST_SPLIT for v in ids])
    out = {}
    for name, labels in sorted(label_sets.items()):
        y, _ = encode_labels([labels.get(v) for v in ids])
        y = torch.from_numpy(y)
        if test.any() and (~test).any():
            t = torch.from_numpy(test)
            acc = knn_classify(x[~t], y[~t], x[t], y[t], k=k, tau=tau)
        else:
            acc = knn_accuracy(x, y, k=k, tau=tau)
        if acc == acc:  # not nan
            out[name] = round(float(acc), 4)
    return out


RUN_META = "run.json"  # in every run folder: its resume key and epochs, to find the run a longer one can continue


def adopt_shorter_run(runs: Path, run_dir: Path, resume_key: str, epochs: int) -> Path | None:
    """Start the empty run folder ``run_dir`` from the last checkpoint of a run in ``runs`` with the same
    ``resume_key`` (every training input and setting but ``epochs``) set to fewer epochs, the one set to the most.

    Nothing a run computes depends on its ``epochs`` (clips and noise are seeded per epoch, the lr milestones are in
    the key), so continuing gives what an uninterrupted run of ``epochs`` gives, without repeating the epochs done.
    A run set to more epochs is never adopted: a shorter schedule trains afresh. The shorter run stays whole (its
    checkpoint is hard-linked, and checkpoints are replaced by rename, never rewritten in place) until the new record
    is committed and the superseded runs are removed. Returns the adopted run folder, or None.
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists() or not runs.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for other in runs.iterdir():
        meta = other / RUN_META
        if other == run_dir or not meta.is_file() or not (other / "checkpoints" / "last.ckpt").is_file():
            continue
        info = json.loads(meta.read_text())
        shorter = info.get("resume_key") == resume_key and info.get("epochs", epochs) < epochs
        if shorter and (best is None or info["epochs"] > best[0]):
            best = (int(info["epochs"]), other)
    if best is None:
        return None
    source = best[1]
    if (source / "csv").is_dir():  # the loss history of the epochs already done
        shutil.copytree(source / "csv", run_dir / "csv", dirs_exist_ok=True)
    last.parent.mkdir(parents=True, exist_ok=True)
    tmp = last.with_name(f".{last.name}.adopt-{os.getpid()}")
    try:
        os.link(source / "checkpoints" / "last.ckpt", tmp)
    except OSError:  # a file system without hard links
        shutil.copy2(source / "checkpoints" / "last.ckpt", tmp)
    os.replace(tmp, last)  # last: its presence tells a rerun that the adoption is complete
    return source


def finished_training(done: ChunkRecord | None, train_fingerprint: str) -> dict | None:
    """The training part of a stage's earlier record when it trained with the same train fingerprint and its files
    are still there (only evaluation settings changed since), else None."""
    if done is None:
        return None
    info = done.videos.get("model", {})
    if info.get("train_fingerprint") != train_fingerprint:
        return None
    if not (Path(info.get("checkpoint", "")).is_file() and Path(info.get("encoder", "")).is_file()):
        return None
    if checkpoint_problem(info["checkpoint"]) is not None:  # corrupt: resuming the run repairs it from an epoch's
        return None
    try:
        load_encoder(info["encoder"])
    except ValueError:  # a torn export: exported again from the checkpoint
        return None
    keys = ("train_fingerprint", "epochs", "run_dir", "checkpoint", "encoder", "knn_monitor")
    return {k: info[k] for k in keys if k in info}


def initial_encoder(shared: PretrainConfig) -> ResNet3d:
    """The randomly initialised encoder every stage without ``init_from`` starts from (same seed, same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shared.seed)
        return ResNet3d(shared.arch, shared.embed_dim, shared.width)


def _loss_history(run_dir: Path) -> list[float]:
    """Per-epoch mean loss over every (re)start of the run, in epoch order."""
    import csv

    by_epoch: dict[int, float] = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("loss_epoch"):
                    by_epoch[int(row["epoch"])] = float(row["loss_epoch"])
    return [round(by_epoch[e], 5) for e in sorted(by_epoch)]


def epoch_rows(run_dir: Path) -> list[dict]:
    """One row per finished epoch of the run, over every (re)start, in epoch order: {"epoch": 1-based, "loss", "lr"
    [, "knn_acc"]}, as ``EpochReporter`` reports them live (the loss is ``loss_per_epoch``'s)."""
    import csv

    by_epoch: dict[int, dict] = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("loss_epoch"):
                    epoch = int(row["epoch"])
                    by_epoch[epoch] = {"epoch": epoch + 1, **{
                        name: round(float(row[key]), 5 if key == "loss_epoch" else 6)
                        for key, name in EPOCH_METRICS.items() if row.get(key)}}
    return [by_epoch[e] for e in sorted(by_epoch)]


# The behaviour version of this module's stage(s), in their cache keys: bump it when results change (README: "Cache keys
# and upgrades"); tests/runtime/test_behaviour_pins.py says when.
BEHAVIOUR = {"pretrain": 1}  # every training stage (pretrain_ir, pretrain_la, ...) runs this task


@task(name="train-stage", task_run_name="{stage}")
def train_stage_task(workspace: str, stage: str, chunk: str, fingerprint: str, train_fingerprint: str,
                     resume_key: str, train_ids: list[str], train_frames: list[int], eval_ids: list[str],
                     eval_frames: list[int], splits: dict[str, str], label_sets: dict[str, dict[str, str]],
                     shared: PretrainConfig, stage_config: TrainStageConfig, init_checkpoint: str | None = None,
                     progress: bool = True, upstream: Upstream | None = None) -> ChunkRecord:
    """``train_stage`` in the task's own process (several devices: ``ddp_spawn``)."""
    return train_stage(workspace, stage, chunk, fingerprint, train_fingerprint, resume_key, train_ids, train_frames,
                       eval_ids, eval_frames, splits, label_sets, shared, stage_config, init_checkpoint, progress,
                       upstream=upstream)


def launched_rank(devices: int) -> int:
    """This process's global rank in a DDP job whose processes were started outside it: srun's task index under
    SLURM (what Lightning's SLURM environment reads), else the rank Lightning's own launcher gave a process it
    started by running the command again (``NODE_RANK`` x devices + ``LOCAL_RANK``); 0 for the process that starts
    a job itself."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_PROCID", "0"))
    return int(os.environ.get("NODE_RANK", "0")) * devices + int(os.environ.get("LOCAL_RANK", "0"))


def train_stage(workspace: str, stage: str, chunk: str, fingerprint: str, train_fingerprint: str, resume_key: str,
                train_ids: list[str], train_frames: list[int], eval_ids: list[str], eval_frames: list[int],
                splits: dict[str, str], label_sets: dict[str, dict[str, str]], shared: PretrainConfig,
                stage_config: TrainStageConfig, init_checkpoint: str | None = None, progress: bool = True,
                launched: bool = False, upstream: Upstream | None = None) -> ChunkRecord | None:
    """Train (or resume, or continue a shorter run) one stage, export the encoder and the embeddings of every
    decoded video, evaluate kNN, commit the record. When only the evaluation changed (``fingerprint`` differs,
    ``train_fingerprint`` is the earlier record's), the trained run is exported and evaluated again without training.

    The Prefect task runs it; so does ``idtprior train-stage`` with ``launched`` True: this process is one of a DDP
    job's, started from outside it (by srun on every node, or by Lightning running the command again per device), so
    it trains with ``ddp`` instead of spawning, and only global rank 0 readies the run folder, exports, evaluates and
    commits; the other ranks return None when training ends.

    ``upstream``: the records its key was planned from (decoded frames, clusters, sketches, the network it starts
    from), checked before it reads any and again before it commits (``storage.upstream``)."""
    ws = Workspace(workspace)
    done = ws.read_record(stage, chunk)
    if done is not None and done.fingerprint == fingerprint:
        return done
    check_upstream(ws, upstream, stage)
    rank = launched_rank(shared.devices) if launched else 0
    runs = Path(ws.path("runs", stage))
    n_train = len(train_ids)
    if stage_config.objective == "supervised":  # trains on the labelled training videos only
        keep = set(supervised_labels(stage, label_sets, stage_config.label_column, train_ids)[0])
        train_frames = [n for v, n in zip(train_ids, train_frames) if v in keep]
        train_ids = [v for v in train_ids if v in keep]
    trained = finished_training(done, train_fingerprint)
    if trained is None:
        strategy = ("ddp" if shared.devices * shared.num_nodes > 1 else "auto") if launched else None
        # the stage's display in this process (the flow's, on the terminal and in the UI) shows the epochs: Lightning's
        # own per-step bar would be a second display of one stage. Not under ddp_spawn (several devices): its
        # processes cannot reach the display; the flow reads the epochs from the logs at the end, Lightning's bar
        # shows them meanwhile
        on_epoch = epoch_done_callback(ws.url, stage) if shared.devices * shared.num_nodes == 1 else None
        trained = _train(ws, runs / train_fingerprint[:16], train_fingerprint, resume_key, train_ids, train_frames,
                         label_sets, shared, stage_config, init_checkpoint, progress and on_epoch is None,
                         strategy=strategy, prepare=rank == 0, on_epoch=on_epoch, upstream=upstream)
    if rank != 0:
        return None
    run_dir = Path(trained["run_dir"])
    evaluation = WorkspaceClipSource(ws.url, eval_ids, eval_frames)
    emb_args = (shared.clip_length, shared.crop_size, shared.batch_size, shared.num_workers)
    emb = compute_embeddings(load_encoder(trained["encoder"]), evaluation, *emb_args, frame_step=shared.frame_step)
    info = {
        "status": "ok", "objective": stage_config.objective, "train_videos": len(train_ids),
        "eval_videos": len(eval_ids), **trained, "loss_per_epoch": _loss_history(run_dir),
        "knn": knn_report(emb, eval_ids, splits, label_sets, shared.knn_k, shared.tau),
    }
    if stage_config.objective == "la":
        info["cluster_source"] = stage_config.cluster_source
    if stage_config.objective == "supervised":
        names = supervised_labels(stage, label_sets, stage_config.label_column, train_ids)[2]
        info.update({"label_column": stage_config.label_column, "classes": len(names),
                     "unlabelled_videos": n_train - len(train_ids)})
    if init_checkpoint is None:  # the same network before any training: the random-init baseline
        base = compute_embeddings(initial_encoder(shared), evaluation, *emb_args, frame_step=shared.frame_step)
        info["knn_init"] = knn_report(base, eval_ids, splits, label_sets, shared.knn_k, shared.tau)
    version, group = ws.new_version(stage, chunk)
    arr = group.create_array("embeddings", data=emb.astype(np.float32), overwrite=True, **array_options())
    arr.attrs["video_ids"] = list(eval_ids)
    record = ChunkRecord(stage, chunk, fingerprint, version, {"model": info})
    check_upstream(ws, upstream, stage)  # unchanged while it trained
    ws.commit(stamp(record, "pretrain"))
    for old in runs.iterdir():  # earlier settings' runs: their record is gone, nothing points at them
        if old.is_dir() and old != run_dir:
            shutil.rmtree(old, ignore_errors=True)
    return record


def prepare_run(run_dir: Path, train_fingerprint: str, resume_key: str, epochs: int) -> None:
    """Ready ``run_dir`` for training: a shorter run's checkpoint adopted where there is one, the run's keys and
    epochs written (``RUN_META``). One process does it before a job's ranks start: they must all resume from the same
    checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    adopt_shorter_run(run_dir.parent, run_dir, resume_key, epochs)
    (run_dir / RUN_META).write_text(json.dumps({"resume_key": resume_key, "epochs": epochs,
                                                "train_fingerprint": train_fingerprint}))


def prepare_stage_run(workspace: str, stage: str, chunk: str, fingerprint: str, train_fingerprint: str,
                      resume_key: str, stage_config: TrainStageConfig, **_) -> bool:
    """``idtprior train-stage --prepare-only``: ``prepare_run`` for the stage's plan (the keyword arguments of
    ``train_stage``); False, and nothing done, when the stage has nothing to train."""
    ws = Workspace(workspace)
    done = ws.read_record(stage, chunk)
    if (done is not None and done.fingerprint == fingerprint) or finished_training(done, train_fingerprint):
        return False
    prepare_run(Path(ws.path("runs", stage)) / train_fingerprint[:16], train_fingerprint, resume_key,
                stage_config.epochs)
    return True


def _train(ws: Workspace, run_dir: Path, train_fingerprint: str, resume_key: str, train_ids: list[str],
           train_frames: list[int], label_sets: dict[str, dict[str, str]], shared: PretrainConfig,
           stage_config: TrainStageConfig, init_checkpoint: str | None, progress: bool, strategy: str | None = None,
           prepare: bool = True, on_epoch=None, upstream: Upstream | None = None) -> dict:
    """Train the stage in ``run_dir`` (resuming its last checkpoint, or continuing a shorter run's); the training
    part of the record. ``prepare`` False: another process readied ``run_dir`` (a DDP job's rank other than 0).
    ``on_epoch(row)``: called after each epoch (``EpochReporter``)."""
    params = pretrain_params(shared, stage_config, len(train_ids), progress, strategy)
    cluster_labels = idt_sketch = idt_valid = class_labels = None
    if stage_config.objective == "supervised":
        # train_ids are the labelled ones (train_stage kept them); the folder runs/<stage>/ names the stage
        class_labels = supervised_labels(run_dir.parent.name, label_sets, stage_config.label_column, train_ids)[1]
    upstream = upstream or {}
    if stage_config.objective == "la" and stage_config.cluster_source == "idt":
        cluster_labels = idt_labels_for(ws, train_ids, upstream.get("cluster", {}).get(ALL), run_dir.parent.name)
    if stage_config.objective == "la" and stage_config.cluster_source == "joint":
        # zero rows (valid False) where a video has no sketch
        idt_sketch, idt_valid = read_sketches(ws, train_ids, upstream.get("encode"), run_dir.parent.name)
    monitor = None
    if "label" in label_sets:
        monitor, _ = encode_labels([label_sets["label"].get(v) for v in train_ids])
        monitor = monitor if (monitor >= 0).sum() >= 2 else None
    run_dir.mkdir(parents=True, exist_ok=True)
    if prepare:
        prepare_run(run_dir, train_fingerprint, resume_key, stage_config.epochs)
    source = WorkspaceClipSource(ws.url, train_ids, train_frames)
    result = train(params, source, out_dir=run_dir, labels_for_eval=monitor, init_from=init_checkpoint,
                   cluster_labels=cluster_labels, idt_sketch=idt_sketch, idt_valid=idt_valid,
                   class_labels=class_labels, resume=True,
                   export_embeddings=False, loggers=[EpochReporter(on_epoch)] if on_epoch is not None else (),
                   fault_loss=fault_loss_from_env())
    trained = {"train_fingerprint": train_fingerprint, "epochs": result.epochs_completed, "run_dir": str(run_dir),
               "checkpoint": str(result.checkpoint), "encoder": str(result.encoder)}
    if "knn_acc" in result.metrics:
        trained["knn_monitor"] = round(result.metrics["knn_acc"], 4)
    return trained


def read_embeddings(ws: Workspace, stage: str) -> tuple[np.ndarray, list[str]]:
    """(N, D) float32 embeddings a training stage exported, and the video ids they align with."""
    rec = ws.read_record(stage, ALL)
    if rec is None:
        raise KeyError(f"workspace {ws.url} has no {stage} embeddings: run the {stage} stage first")
    with reading(stage, ALL):
        arr = ws.open_verified(stage, rec)["embeddings"]
        return np.asarray(arr[...]), list(arr.attrs["video_ids"])
