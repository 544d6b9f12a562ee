"""``train``: one pretraining stage run (or resumed) with PyTorch Lightning, its encoder, bank and embeddings
exported; the per-epoch metrics reported as they come (``EpochReporter``)."""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.utilities import rank_zero_only

from idtprior.models.checkpoints import (AtomicCheckpointIO, checkpoint_problem, epochs_done, epochs_in_checkpoint,
                                         put_in_place, resume_checkpoint, whole_init_checkpoint, write_atomic)
from idtprior.models.data import ClipDataModule, ClipDataset, ClipSource, collate_clips
from idtprior.models.lightning import (LossFault, NonFiniteLossError, PretrainModule, PretrainParams, augment_of,
                                       augment_place)
from idtprior.models.resnet3d import ResNet3d


@torch.no_grad()
def compute_embeddings(
    encoder: ResNet3d, source: ClipSource, clip_length: int, crop_size: int, batch_size: int = 32,
    num_workers: int = 0, device: str | torch.device | None = None, frame_step: int = 1,
) -> np.ndarray:
    """Embeddings ``(N, embed_dim)`` float32 of every video's centre clip, in index order."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loader = torch.utils.data.DataLoader(
        ClipDataset(source, clip_length, crop_size, train=False, frame_step=frame_step), batch_size=batch_size,
        num_workers=num_workers, collate_fn=collate_clips,
    )
    was_training = encoder.training
    encoder.eval().to(device)
    out = np.zeros((len(source), encoder.embed_dim), dtype=np.float32)
    for indices, clips in loader:
        out[indices.numpy()] = encoder(clips.to(device)).float().cpu().numpy()
    encoder.train(was_training)
    return out


def export_encoder(
    module: PretrainModule, out_dir: str | Path, source: ClipSource | None = None, batch_size: int = 32,
    num_workers: int = 0,
) -> dict[str, Path]:
    """Write ``encoder.pt`` (state_dict + arch), ``bank.npy`` ``(N, D)`` and, given a source, ``embeddings.npy``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = module.params
    paths = {"encoder": out_dir / "encoder.pt", "bank": out_dir / "bank.npy"}
    # each file written whole then renamed: a kill mid-export leaves the earlier file or none, never a torn one
    write_atomic(paths["encoder"], lambda f: torch.save({
        "arch": p.arch, "width": p.width, "embed_dim": p.embed_dim,
        "state_dict": {k: v.cpu() for k, v in module.encoder.state_dict().items()}}, f))
    write_atomic(paths["bank"], lambda f: np.save(f, module.bank.bank.detach().cpu().numpy()))
    if source is not None:
        paths["embeddings"] = out_dir / "embeddings.npy"
        # device=None picks CUDA when present: after fit, Lightning's teardown has moved the module to the CPU
        emb = compute_embeddings(module.encoder, source, p.clip_length, p.crop_size, batch_size, num_workers,
                                 frame_step=p.frame_step)
        write_atomic(paths["embeddings"], lambda f: np.save(f, emb))
    return paths


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` leaves in ``out_dir``."""

    checkpoint: Path  # last.ckpt
    encoder: Path
    bank: Path
    embeddings: Path | None
    metrics_csv: Path  # the log of this (re)start; earlier starts are in sibling version_<k> folders
    epochs_completed: int
    metrics: dict[str, float]  # last logged values: loss_epoch, lr, knn_acc (when labels were given)


EPOCH_METRICS = {"loss_epoch": "loss", "lr": "lr", "knn_acc": "knn_acc"}
"""What ``EpochReporter`` reports of each epoch (the module's epoch-level metrics), under the names it uses."""


class EpochReporter(Logger):
    """Hands each finished epoch's metrics to ``report(row)``, ``row`` = {"epoch": 1-based, "loss", "lr"[, "knn_acc"]}
    (loss rounded to 5 digits, as the stage's record keeps it), on global rank zero: progress reports while a long
    stage runs. A logger, not a callback: Lightning gives loggers an epoch's metrics once they are reduced, after every
    epoch-end hook has logged its own (lr, the kNN monitor).

    ``report`` stays in the process that made the reporter: a copy sent to ``ddp_spawn``'s processes reports
    nothing (a closure over a display cannot travel, and those processes have no display)."""

    def __init__(self, report) -> None:
        super().__init__()
        self.report = report

    def __getstate__(self) -> dict:
        return {**self.__dict__, "report": None}

    @property
    def name(self) -> str:
        return "epochs"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.report is None or "loss_epoch" not in metrics:  # a step's metrics, not an epoch's
            return
        row: dict[str, float] = {"epoch": int(metrics.get("epoch", 0)) + 1}
        for key, name in EPOCH_METRICS.items():
            if key in metrics:
                row[name] = round(float(metrics[key]), 5 if key == "loss_epoch" else 6)
        self.report(row)


def _tensorboard(out_dir: Path) -> list:
    """A TensorBoard log beside the CSV one where ``tensorboard`` (or ``tensorboardX``) is installed."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        return []
    from pytorch_lightning.loggers import TensorBoardLogger

    return [TensorBoardLogger(save_dir=out_dir, name="tensorboard", version=None)]


def _strategy(params: PretrainParams) -> str:
    if params.strategy != "auto":
        return params.strategy
    return "ddp" if params.devices * params.num_nodes > 1 else "auto"


def train(
    params: PretrainParams,
    source: ClipSource,
    *,
    out_dir: str | Path,
    labels_for_eval: np.ndarray | None = None,
    init_from: str | Path | None = None,
    cluster_labels: np.ndarray | None = None,
    idt_sketch: np.ndarray | None = None,
    idt_valid: np.ndarray | None = None,
    class_labels: np.ndarray | None = None,
    resume: bool = True,
    export_embeddings: bool = True,
    callbacks: Sequence[Callback] = (),
    loggers: Sequence[Logger] = (),
    fault_loss: LossFault | None = None,
) -> TrainResult:
    """Run (or resume) one pretraining stage and export its encoder, bank and embeddings.

    Args:
        params: hyper-parameters.
        source: training videos as a clip source (N = ``len(source)``).
        out_dir: run folder: ``checkpoints/last.ckpt`` (every epoch), ``csv/version_<k>/metrics.csv`` (one per
            start or resume), ``encoder.pt``, ``bank.npy``, ``embeddings.npy``.
        labels_for_eval: ``(N,)`` labels for the kNN monitor, or None.
        init_from: a checkpoint whose encoder and bank start this run (ignored when resuming from ``last.ckpt``).
        cluster_labels: ``(m, N)`` labels for ``la`` with ``cluster_source="idt"``.
        idt_sketch: ``(N, S)`` sketches for ``cluster_source="joint"``.
        idt_valid: ``(N,)`` bool, False where a video has no sketch (``joint``): a cluster of its own.
        class_labels: ``(N,)`` int classes (< 0: unlabelled) for ``objective="supervised"``.
        resume: continue from ``out_dir/checkpoints/last.ckpt`` when present. The checkpoint may come from a run set
            to fewer epochs with otherwise equal params: nothing a run computes depends on ``epochs``, so it continues
            as an uninterrupted run of ``params.epochs`` would; a checkpoint past ``params.epochs`` is refused. A
            corrupt ``last.ckpt`` is passed over for the newest whole epoch checkpoint (the last two are kept), which
            then takes its place; with none, training starts over (:func:`resume_checkpoint`, with a warning).
        callbacks: extra Lightning callbacks.
        loggers: extra Lightning loggers (``EpochReporter`` for progress reports).

    Raises:
        NonFiniteLossError: a step's loss was NaN or infinite (named with the run folder, epoch, batch and step); the
            checkpoints on disk are those of the last finished epoch.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(source)
    module = PretrainModule(params, n, cluster_labels=cluster_labels, idt_sketch=idt_sketch,
                            labels_for_eval=labels_for_eval, idt_valid=idt_valid, class_labels=class_labels,
                            fault_loss=fault_loss)
    last = out_dir / "checkpoints" / "last.ckpt"
    start = resume_checkpoint(last.parent) if resume else None
    ckpt_path = None if start is None else str(start)
    if start is not None and (done := epochs_in_checkpoint(start)) > params.epochs:
        # Lightning would stop at once and hand back the longer run's weights as this run's
        raise ValueError(f"checkpoint {start}: {done} epochs done, more than this run's epochs {params.epochs}; "
                         f"train in a new out_dir (or resume=False)")
    if init_from is not None and ckpt_path is None:
        module.load_init(whole_init_checkpoint(init_from))
    data = ClipDataModule(source, params.clip_length, params.crop_size, params.batch_size, params.num_workers,
                          params.seed, drop_last=params.drop_last, augment=augment_of(params),
                          frame_step=params.frame_step, augment_on=augment_place(params))
    # no version counter: a last.ckpt this callback did not write itself (one adopted from a shorter run, whose
    # folder the restored callback state names) must be replaced, not kept beside a new last-v1.ckpt
    # the last two epochs' checkpoints besides last.ckpt ("step" only grows, so the top 2 are the newest): a corrupt
    # last.ckpt leaves the epoch before it to resume from
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="epoch{epoch:04d}",
                                 auto_insert_metric_name=False, every_n_epochs=1, monitor="step", mode="max",
                                 save_top_k=2, save_last=True, enable_version_counter=False)
    # version=None: every (re)start writes csv/version_<k>/metrics.csv; a fixed version would delete the earlier log
    logger = CSVLogger(save_dir=out_dir, name="csv", version=None)
    trainer = pl.Trainer(
        accelerator=params.accelerator, devices=params.devices, num_nodes=params.num_nodes,
        # precision: any str Lightning accepts (it checks the value); its stubs want one of its Literals
        strategy=_strategy(params), precision=params.precision, max_epochs=params.epochs,  # type: ignore[arg-type]
        logger=[logger, *_tensorboard(out_dir), *loggers], callbacks=[checkpoint, *callbacks],
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=params.log_every_n_steps, enable_progress_bar=params.progress_bar,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"run {out_dir}: {e}") from e
    except Exception as e:  # ddp_spawn: a process's exception comes back as the text of its traceback
        found = re.findall(rf"{NonFiniteLossError.__name__}: (.+)", str(e))
        if found:
            raise NonFiniteLossError(f"run {out_dir}: {found[-1].strip()}") from e
        raise
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    paths: dict[str, Path] = {}
    if trainer.is_global_zero and start is not None and start != last and checkpoint_problem(last) is not None:
        # resumed past a corrupt last.ckpt and trained no epoch (the run was done): no save replaced it
        put_in_place(start, last)
    if trainer.is_global_zero:
        paths = export_encoder(module, out_dir, source if export_embeddings else None,
                               batch_size=params.batch_size, num_workers=params.num_workers)
    return TrainResult(
        checkpoint=last, encoder=out_dir / "encoder.pt", bank=out_dir / "bank.npy",
        embeddings=paths.get("embeddings"), metrics_csv=Path(logger.log_dir) / "metrics.csv",
        # from the checkpoint: under ddp_spawn the fit ran in other processes and this trainer's counter stayed 0
        epochs_completed=epochs_done(last, trainer.current_epoch), metrics=metrics,
    )
