"""Pretraining with PyTorch Lightning: IR warm-up, Local Aggregation with IDT / bank / joint clusters, and the
supervised baseline (cross-entropy through a linear classifier on the backbone features), resumable.

``train(params, source, out_dir=...)`` is the single entry the pipeline stages call. Everything a run needs to
continue identically after a kill lives in ``out_dir/checkpoints/last.ckpt``: weights, optimiser and LR schedule
(Lightning), the memory bank, the NCE normaliser and the cluster labels (module buffers), and the global RNG states
(``on_save_checkpoint``). Clips are seeded per ``(seed, epoch, video)`` (see ``data.py``), the NCE noise per
``(seed, epoch, rank)`` (:func:`noise_seed`), so neither depends on what a checkpoint carries or on how many epochs the
run is set to: a resumed or lengthened run draws what an uninterrupted one draws, on every DDP rank.

Faults: a NaN or infinite loss stops the run (:class:`NonFiniteLossError`) before that step's update, so no checkpoint
ever holds poisoned weights; the last two epochs' checkpoints are kept besides ``last.ckpt``, and a corrupt
``last.ckpt`` is passed over for the newest whole one (:func:`resume_checkpoint`).
"""

import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist

from idtprior.models.checkpoints import first_line
from idtprior.models.clustering import cluster_bank, cluster_joint, knn_accuracy
from idtprior.models.data import AUGMENT_ON, SCALES
from idtprior.models.losses import draw_noise, ir_nce_loss, ir_softmax_loss, la_loss, nce_log_z, supervised_loss
from idtprior.models.memory_bank import MemoryBank
from idtprior.models.resnet3d import BLOCKS, ResNet3d

OBJECTIVES = ("ir", "la", "supervised")
LossFault = tuple[int, int, float, int | None]
"""``(epoch, batch, value, rank)``: the loss of that batch (counted from 1) made ``value`` (nan, inf, -inf) on global rank
``rank`` (None: every rank); what the tests' and drills' fault hook asks for (``idtprior.testing.fault_loss_from_env``)."""
CLUSTER_SOURCES = ("idt", "bank", "joint")


@dataclass(frozen=True)
class PretrainParams:
    """Hyper-parameters of one pretraining stage; defaults are the paper's (Kinetics, ResNet-18, 16x112x112)."""

    arch: str = "resnet18"
    width: float = 1.0  # stage-width multiplier; 0.125 for CPU-sized runs
    embed_dim: int = 128
    clip_length: int = 16
    frame_step: int = 1  # clips take every frame_step-th frame
    crop_size: int = 112
    # training-clip augmentation (Hara et al. / the paper): multi-scale crops of the short side, random grayscale,
    # colour jitter, horizontal flip
    crop_scales: tuple[float, ...] = SCALES
    grayscale_p: float = 0.2
    color_jitter: float = 0.4
    hflip: bool = True
    batch_size: int = 128  # per device
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4  # not applied to BatchNorm parameters and biases
    milestones: tuple[int, ...] = (160, 190)  # epochs at which lr *= gamma
    gamma: float = 0.1
    epochs: int = 200
    tau: float = 0.07
    objective: str = "ir"  # "ir", "la" or "supervised" (class labels through a linear classifier)
    ir_exact: bool = False  # IR with the full softmax over the bank instead of NCE (small N only)
    negatives: int = 4096  # NCE noise samples per clip
    nce_z_momentum: float = 0.99  # Z <- m Z + (1 - m) Z_batch after the first batch; 1.0 keeps Wu et al.'s fixed Z
    bank_momentum: float = 0.5
    la_k: int = 4096  # background neighbours, clipped to N
    cluster_source: str = "idt"  # "idt" (given labels), "bank" or "joint" (K-means every epoch)
    n_clusters: int = 6000
    kmeans_runs: int = 3
    kmeans_iters: int = 20
    knn_k: int = 20  # neighbours of the per-epoch kNN monitor
    seed: int = 0
    num_workers: int = 8
    augment_on: str = "auto"  # "loader", "device" (DeviceAugment after the transfer) or "auto" (device on a GPU)
    precision: str = "32-true"  # "bf16-mixed" on GPUs
    accelerator: str = "auto"
    devices: int = 1  # per machine; > 1 trains with DDP
    num_nodes: int = 1  # machines (devices x num_nodes processes, started by srun: see idtprior train-stage)
    strategy: str = "auto"  # "auto": "ddp" when devices x num_nodes > 1; "ddp_spawn" where the caller is not a
    # script (Prefect)
    drop_last: bool = True
    log_every_n_steps: int = 50
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.augment_on not in ("auto", *AUGMENT_ON):
            raise ValueError(f"augment_on {self.augment_on!r} is not one of {('auto', *AUGMENT_ON)}")
        if self.arch not in BLOCKS:
            raise ValueError(f"arch {self.arch!r} is not one of {sorted(BLOCKS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {OBJECTIVES}")
        if self.cluster_source not in CLUSTER_SOURCES:
            raise ValueError(f"cluster_source {self.cluster_source!r} is not one of {CLUSTER_SOURCES}")
        for name in ("embed_dim", "clip_length", "frame_step", "crop_size", "batch_size", "epochs", "negatives",
                     "la_k", "n_clusters", "kmeans_runs", "knn_k", "devices", "num_nodes", "log_every_n_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be at least 1")
        for name in ("lr", "tau", "width"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} {getattr(self, name)} must be positive")
        for name in ("bank_momentum", "nce_z_momentum", "momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} {getattr(self, name)} must be in [0, 1]")
        if not self.crop_scales or any(not 0 < float(c) <= 1 for c in self.crop_scales):
            raise ValueError(f"crop_scales {tuple(self.crop_scales)} must be in (0, 1]")
        object.__setattr__(self, "crop_scales", tuple(float(c) for c in self.crop_scales))
        for name in ("grayscale_p", "color_jitter"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} {getattr(self, name)} must be in [0, 1]")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones {self.milestones} must be increasing")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))


def augment_place(params: PretrainParams) -> str:
    """Where the training clips are transformed: ``params.augment_on``, with ``"auto"`` the device when training on
    a GPU (the loader workers then only read and crop) and the loader otherwise."""
    if params.augment_on != "auto":
        return params.augment_on
    return "device" if params.accelerator != "cpu" and torch.cuda.is_available() else "loader"


def augment_of(params: PretrainParams) -> dict[str, Any]:
    """The training-clip augmentation of ``params`` as :class:`ClipDataset` arguments."""
    return {"scales": params.crop_scales, "grayscale_p": params.grayscale_p, "jitter": params.color_jitter,
            "flip": params.hflip}


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class NonFiniteLossError(FloatingPointError):
    """A training step's loss is NaN or infinite. Raised before that step's backward pass and optimiser update, so the
    weights in memory and every checkpoint on disk are those of the last finished epoch; never retried (not an
    ``OSError``: the same data and weights give the same loss again)."""


def noise_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the NCE noise one DDP rank draws in one epoch.

    A function of ``(seed, epoch, rank)`` only: a generator state carried in the checkpoint would be rank 0's (only
    rank 0 writes it), so after a DDP resume every rank would draw rank 0's noise.
    """
    return int(np.random.SeedSequence([seed, epoch, rank, 0x4E4345]).generate_state(1)[0])  # "NCE" tag


class PretrainModule(pl.LightningModule):
    """Encoder + memory bank + objective.

    Args:
        params: the stage's :class:`PretrainParams`.
        n_videos: N, the number of training videos (rows of the bank).
        cluster_labels: ``(m, N)`` int labels for ``cluster_source="idt"`` (from the cluster stage).
        idt_sketch: ``(N, S)`` IDT sketches for ``cluster_source="joint"``; kept on the CPU, not in checkpoints.
        idt_valid: ``(N,)`` bool, False where a video has no IDT sketch (``joint``; None: all valid). Such a video
            gets a cluster of its own in every joint K-means run.
        labels_for_eval: ``(N,)`` int class labels (< 0 = unknown) for the per-epoch kNN monitor, or None.
        class_labels: ``(N,)`` int classes in ``[0, C)`` (< 0: unlabelled, no loss) for ``objective="supervised"``;
            C is ``max + 1``. The classifier ``(feature_dim -> C)`` sits on the encoder's backbone features, as the
            finetuning probes' does; the embedding head gets no gradient from it and stays frozen at its seeded init
            (a random projection of the trained features: what the bank, the kNN monitor and the export see).
    """

    cluster_labels: torch.Tensor
    log_z: torch.Tensor
    class_labels: torch.Tensor

    def __init__(
        self,
        params: PretrainParams,
        n_videos: int,
        cluster_labels: np.ndarray | torch.Tensor | None = None,
        idt_sketch: np.ndarray | torch.Tensor | None = None,
        labels_for_eval: np.ndarray | torch.Tensor | None = None,
        idt_valid: np.ndarray | torch.Tensor | None = None,
        class_labels: np.ndarray | torch.Tensor | None = None,
        fault_loss: LossFault | None = None,
    ) -> None:
        super().__init__()
        self.params = params
        self.hparams.update({**dataclasses.asdict(params), "n_videos": n_videos})  # logged and checkpointed
        targets = self._class_labels(params, n_videos, class_labels)
        self.classifier: torch.nn.Linear | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)  # the same initial weights for the same seed, global RNG untouched
            self.encoder = ResNet3d(params.arch, params.embed_dim, params.width)
            if targets is not None:  # drawn after the encoder: its weights are every other stage's initial ones
                n_classes = int(targets.max()) + 1
                self.hparams["n_classes"] = n_classes
                self.classifier = torch.nn.Linear(self.encoder.feature_dim, n_classes)
        if targets is not None:
            self.register_buffer("class_labels", targets)  # only here: other objectives' checkpoints keep their keys
            # no gradient reaches the embedding head from the class loss: frozen, so DDP does not wait for one and no
            # optimiser state or weight decay touches it
            self.encoder.fc.requires_grad_(False)
        self.bank = MemoryBank(n_videos, params.embed_dim, params.bank_momentum, seed=params.seed)
        self.register_buffer("log_z", torch.tensor(float("nan")))  # NCE log Z; nan until the first batch
        self.register_buffer("cluster_labels", self._initial_labels(params, n_videos, cluster_labels, idt_sketch,
                                                                    idt_valid))
        self.idt_sketch = None if idt_sketch is None else torch.as_tensor(np.asarray(idt_sketch), dtype=torch.float32)
        self.idt_valid = None if idt_valid is None else torch.as_tensor(np.asarray(idt_valid), dtype=torch.bool)
        self.labels_for_eval = None
        if labels_for_eval is not None:
            self.labels_for_eval = torch.as_tensor(np.asarray(labels_for_eval), dtype=torch.long)
            if self.labels_for_eval.shape != (n_videos,):
                raise ValueError(f"labels_for_eval shape {tuple(self.labels_for_eval.shape)} must be ({n_videos},)")
        # reseeded per (seed, epoch, rank) at every epoch start (noise_seed); this seed only serves calls outside fit
        self.noise_generator = torch.Generator().manual_seed(params.seed)
        # tests and drills only (idtprior.testing.fault_loss_from_env): the loss of one batch made non-finite; kept on
        # the module, which travels to ddp_spawn's processes
        self.fault_loss = fault_loss

    @staticmethod
    def _class_labels(params: PretrainParams, n: int, class_labels: Any) -> torch.Tensor | None:
        if params.objective != "supervised":
            return None
        if class_labels is None:
            raise ValueError("objective 'supervised' needs class_labels of shape (N,)")
        labels = torch.as_tensor(np.asarray(class_labels), dtype=torch.long)
        if labels.shape != (n,):
            raise ValueError(f"class_labels shape {tuple(labels.shape)} must be ({n},)")
        if not bool((labels >= 0).any()):
            raise ValueError(f"class_labels: none of the {n} videos has a class (all < 0)")
        return labels.clone()

    @staticmethod
    def _initial_labels(
        params: PretrainParams, n: int, cluster_labels: Any, idt_sketch: Any, idt_valid: Any = None
    ) -> torch.Tensor:
        if params.objective != "la":
            return torch.zeros(0, n, dtype=torch.long)
        if params.cluster_source == "idt":
            if cluster_labels is None:
                raise ValueError("objective 'la' with cluster_source 'idt' needs cluster_labels of shape (m, N)")
            labels = torch.as_tensor(np.asarray(cluster_labels), dtype=torch.long)
            labels = labels[None] if labels.ndim == 1 else labels
            if labels.ndim != 2 or labels.shape[1] != n:
                raise ValueError(f"cluster_labels shape {tuple(labels.shape)} must be (m, {n})")
            return labels.clone()
        if params.cluster_source == "joint":
            if idt_sketch is None:
                raise ValueError("cluster_source 'joint' needs idt_sketch of shape (N, S)")
            if np.asarray(idt_sketch).shape[0] != n:
                raise ValueError(f"idt_sketch shape {np.asarray(idt_sketch).shape} must be ({n}, S)")
            if idt_valid is not None:
                if np.asarray(idt_valid).shape != (n,):
                    raise ValueError(f"idt_valid shape {np.asarray(idt_valid).shape} must be ({n},)")
                n_valid = int(np.asarray(idt_valid, bool).sum())
                if params.n_clusters > n_valid:
                    raise ValueError(f"n_clusters {params.n_clusters} exceeds the {n_valid} of {n} videos that "
                                     f"have an IDT sketch")
        if params.n_clusters > n:
            raise ValueError(f"n_clusters {params.n_clusters} exceeds the {n} videos")
        return torch.zeros(params.kmeans_runs, n, dtype=torch.long)  # filled at every epoch start

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, 3, T, H, W) -> (B, embed_dim)``."""
        return self.encoder(clips)

    # --- training -------------------------------------------------------------------------------------------------

    def _update_log_z(self, batch_log_z: torch.Tensor) -> None:
        z = batch_log_z.detach().float()
        if _is_dist():  # one Z for all ranks: average the batch estimates in Z space
            z_lin = z.exp()
            dist.all_reduce(z_lin)
            z = (z_lin / dist.get_world_size()).log()
        m = self.params.nce_z_momentum
        if torch.isnan(self.log_z) or m == 0.0:
            self.log_z.copy_(z)  # Wu et al.: Z from the first batch
        elif m < 1.0:  # then a running average in Z (not log Z): Z <- m Z + (1 - m) Z_batch
            self.log_z.copy_(torch.logaddexp(self.log_z + math.log(m), z + math.log(1.0 - m)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        indices, clips = batch  # (B,), (B, 3, T, H, W)
        p, bank = self.params, self.bank.bank
        if p.objective == "supervised":
            features = self.encoder.features(clips)  # (B, C_feat)
            with torch.no_grad():  # the embedding, for the bank only (what the encoder's forward gives)
                v = torch.nn.functional.normalize(self.encoder.fc(features), dim=1)  # (B, D)
            classifier = cast(torch.nn.Linear, self.classifier)  # set in __init__ for the supervised objective
            loss = supervised_loss(classifier(features), self.class_labels[indices])
        elif p.objective == "ir" and p.ir_exact:
            v = self.encoder(clips)  # (B, D)
            loss = ir_softmax_loss(v, bank, indices, p.tau)
        elif p.objective == "ir":
            v = self.encoder(clips)
            noise = draw_noise(v.shape[0], bank.shape[0], p.negatives, self.noise_generator).to(bank.device)
            self._update_log_z(nce_log_z(v, bank, noise, p.tau))
            loss = ir_nce_loss(v, bank, indices, noise, self.log_z, p.tau)
        else:
            v = self.encoder(clips)
            loss = la_loss(v, bank, indices, self.cluster_labels, p.la_k, p.tau)
        if self.fault_loss is not None:
            loss = self._injected_fault(loss, batch_idx)
        self._stop_on_non_finite(loss, batch_idx)
        self.log("loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=v.shape[0])
        return {"loss": loss, "embeddings": v.detach().float(), "indices": indices}

    def _injected_fault(self, loss: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # called only when fault_loss is set
        epoch, batch, value, rank = cast(LossFault, self.fault_loss)
        if (self.current_epoch + 1, batch_idx + 1) == (epoch, batch) and rank in (None, self.global_rank):
            return loss + value  # stays in the graph, as a real overflow would
        return loss

    def _stop_on_non_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Raise :class:`NonFiniteLossError` when this step's loss is NaN or infinite on any rank.

        Under DDP every rank gathers every rank's loss (one float each) and raises at the same step: a rank stopping
        alone would leave the others waiting in the gradient all-reduce."""
        losses = loss.detach().float().reshape(1)
        if _is_dist():
            gathered = [torch.empty_like(losses) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, losses)
            losses = torch.cat(gathered)
        if bool(torch.isfinite(losses).all()):  # one device sync per step: the update must wait for the answer
            return
        values = losses.tolist()
        what = f"loss {values[0]}" if len(values) == 1 else "loss per rank " + ", ".join(
            f"{r}: {x}" for r, x in enumerate(values))
        trainer = self.trainer
        raise NonFiniteLossError(
            f"non-finite {what} at epoch {self.current_epoch + 1} of {trainer.max_epochs}, batch {batch_idx + 1} of "
            f"{trainer.num_training_batches}, global step {trainer.global_step + 1} (counted from 1): training stopped "
            f"before this step's update; the checkpoints hold the last good epoch ({self.current_epoch} done)")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # runs after the optimiser step: the bank moves towards this batch's (pre-step) embeddings, as in Wu et al.
        if outputs is not None:
            self.bank.update(outputs["indices"], outputs["embeddings"])

    def on_train_epoch_start(self) -> None:
        p = self.params
        # runs after any checkpoint restore (setup() runs before it, and would be overwritten by rank 0's state)
        self.noise_generator.manual_seed(noise_seed(p.seed, self.current_epoch, self.trainer.global_rank))
        if p.objective == "la" and p.cluster_source in ("bank", "joint"):
            self.recompute_clusters(seed=p.seed * 1009 + self.current_epoch)

    @torch.no_grad()
    def recompute_clusters(self, seed: int) -> None:
        """K-means of the bank (``bank``) or of [bank | IDT sketch] (``joint``) into ``cluster_labels (m, N)``."""
        p = self.params
        if not _is_dist() or dist.get_rank() == 0:
            if p.cluster_source == "bank":
                labels = cluster_bank(self.bank.bank, p.n_clusters, p.kmeans_runs, seed, p.kmeans_iters)
            else:
                sketch = cast(torch.Tensor, self.idt_sketch)  # 'la' with 'joint': __init__ refused a missing one
                labels = cluster_joint(self.bank.bank, sketch, p.n_clusters, p.kmeans_runs, seed,
                                       p.kmeans_iters, valid=self.idt_valid)
            self.cluster_labels.copy_(labels.to(self.cluster_labels.device))
        if _is_dist():  # GPU K-means may differ in the last bit between ranks: rank 0's labels rule
            dist.broadcast(self.cluster_labels, src=0)

    def on_train_epoch_end(self) -> None:
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_epoch=True, sync_dist=False)
        if self.labels_for_eval is not None:
            acc = knn_accuracy(self.bank.bank, self.labels_for_eval, k=self.params.knn_k, tau=self.params.tau)
            self.log("knn_acc", acc, on_epoch=True, prog_bar=True, sync_dist=False)

    def configure_optimizers(self) -> Any:
        p = self.params
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for _name, param in self.named_parameters():
            # BatchNorm scales/shifts and biases are 1-d: weight decay would only fight their scale
            (no_decay if param.ndim <= 1 else decay).append(param)
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=p.lr, momentum=p.momentum,
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(p.milestones), gamma=p.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # --- checkpoint extras ----------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["idtprior_rng"] = {  # no NCE noise state: it is reseeded per (seed, epoch, rank), see noise_seed
            "torch": torch.get_rng_state(),
            # plain tensors and ints only: Lightning loads checkpoints with torch.load(weights_only=True)
            # NumPy's stubs pick the dict overload; get_state() (legacy=True, the default) returns the tuple
            "numpy": _numpy_state_to_plain(np.random.get_state()),  # type: ignore[arg-type]
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("idtprior_rng")
        if rng is None:
            return
        torch.set_rng_state(rng["torch"])
        np.random.set_state(_numpy_state_from_plain(rng["numpy"]))
        random.setstate(rng["python"])
        if rng["cuda"] is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def load_init(self, path: str | Path) -> None:
        """Start from another run's encoder and bank (e.g. LA from the IR warm-up); optimiser and epoch start afresh."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - a truncated zip, a bad pickle, ...: name the file, not the pickle
            raise ValueError(f"init_from {path}: unreadable checkpoint ({first_line(e)}); train the stage that "
                             f"wrote it again") from e
        if not isinstance(state, dict):
            raise ValueError(f"init_from {path}: holds a {type(state).__name__}, not a checkpoint")
        state = state.get("state_dict", state)
        bank = state.get("bank.bank")
        if bank is None:
            raise ValueError(f"init_from {path}: no memory bank ('bank.bank') in its state_dict")
        if tuple(bank.shape) != tuple(self.bank.bank.shape):
            raise ValueError(f"init_from {path}: bank shape {tuple(bank.shape)}, this run needs "
                             f"{tuple(self.bank.bank.shape)}")
        encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        try:
            self.encoder.load_state_dict(encoder)
        except RuntimeError as e:
            raise ValueError(f"init_from {path}: encoder does not match arch={self.params.arch} "
                             f"width={self.params.width}") from e
        self.bank.bank.copy_(bank)
        if "log_z" in state:
            self.log_z.copy_(state["log_z"])
