"""The training and evaluation sections: what every training stage shares (``pretrain``, with its SLURM job's
resources), one section per training stage, and ``evaluate`` (the paper's protocols on labelled sets)."""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from idtprior.config.base import Section

TRAIN_STAGES = ("pretrain_ir", "pretrain_la", "tune_joint", "pretrain_la_bank", "supervised")
"""The network-training stages (one ``TrainStageConfig`` section each): the method's three, then the baselines of the
paper's tables (Video LA with the bank's clusters; the supervised upper bound)."""


class TrainSlurmConfig(Section):
    """The batch job of a training stage run through SLURM (``pretrain.launcher: slurm``, or ``num_nodes`` > 1):
    ``num_nodes`` nodes x ``devices`` tasks, one ``idtprior train-stage`` process per device."""

    partition: str | None = Field(None, description="sbatch --partition (None: the site's default)")
    account: str | None = Field(None, description="sbatch --account")
    cpus_per_task: int = Field(8, ge=1, le=1024, description="cores per training process (its clip-loading "
                               "workers and itself)")
    mem: str = Field("64G", pattern=r"^\d+[KMGT]?$", description="memory per node (sbatch --mem), e.g. 256G")
    time: str = Field("1-00:00:00", pattern=r"^(\d+-)?\d{1,3}:\d{2}(:\d{2})?$",
                      description="time limit (sbatch --time), [D-]HH:MM[:SS]; a job cut off resumes from its last "
                      "epoch when the stage runs again")
    gres: str | None = Field(None, description="sbatch --gres (None: gpu:<devices>, none for accelerator cpu), "
                             "e.g. gpu:a100:4")
    job_extra_directives: tuple[str, ...] = Field((), description="more #SBATCH lines, e.g. ['--exclusive']")
    job_script_prologue: tuple[str, ...] = Field((), description="shell lines run before training, e.g. "
                                                 "['module load cuda/12.8', 'source /shared/venv/bin/activate']")
    command: str | None = Field(None, description="the idtprior command on the nodes (None: this environment's, "
                                "by its absolute path: the nodes share its file system)")
    poll_seconds: float = Field(30.0, gt=0, le=3600, description="how often the stage asks squeue about its job")


class PretrainConfig(Section):
    """What the three training stages share: the network, the clips, the objective's constants, the hardware."""

    arch: Literal["resnet18", "resnet34"] = "resnet18"
    width: float = Field(1.0, gt=0, le=4, description="stage-width multiplier (0.25 for CPU-sized runs)")
    embed_dim: int = Field(128, ge=2)
    clip_length: int = Field(16, ge=1)
    frame_step: int = Field(1, ge=1, description="clips take every frame_step-th decoded frame: clip_length frames "
                            "span (clip_length - 1) * frame_step + 1 (training and evaluation clips)")
    crop_size: int = Field(112, ge=8)
    crop_scales: tuple[float, ...] = Field((1.0, 0.84089641525, 0.70710678118, 0.59460355750, 0.5), min_length=1,
                                           description="training crops: a square of this fraction of the short "
                                           "side, drawn per clip (Hara et al.'s 2^(-i/4))")
    grayscale_p: float = Field(0.2, ge=0, le=1, description="training clips: probability of grayscale")
    color_jitter: float = Field(0.4, ge=0, le=1, description="training clips: brightness/contrast/saturation "
                                "factors in [1-j, 1+j], hue shift in [-j, j] turns")
    hflip: bool = Field(True, description="training clips: horizontal flip with probability 0.5")
    batch_size: int = Field(256, ge=1, description="per device")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    tau: float = Field(0.07, gt=0)
    negatives: int = Field(4096, ge=1, description="IR: NCE noise samples per clip")
    nce_z_momentum: float = Field(0.99, ge=0, le=1, description="IR: the NCE normaliser Z is estimated on the first "
                                  "batch, then kept as a running average Z <- m Z + (1 - m) Z_batch with this m; "
                                  "1.0 fixes it after the first batch, as Wu et al. do; 0.0 re-estimates it per batch")
    ir_exact: bool = Field(False, description="IR: the full softmax over the memory bank instead of NCE (small N)")
    bank_momentum: float = Field(0.5, ge=0, lt=1)
    la_k: int = Field(4096, ge=1, description="LA: background neighbours (clipped to the number of videos)")
    knn_k: int = Field(20, ge=1, description="neighbours of the kNN monitor and evaluation")
    train_split: str | None = Field(None, description="train on the manifest rows of this split (None: every video)")
    eval_labels_file: str | None = Field(None, description="CSV video_id,<label columns...>: extra label sets "
                                         "(e.g. appearance factors) for the kNN evaluation, beside the manifest label")
    num_workers: int = Field(4, ge=0, description="clip-loading worker processes")
    augment_on: Literal["auto", "loader", "device"] = Field(
        "auto", description="where training clips are resized and colour-jittered: loader (the worker processes), "
        "device (workers send uint8 crops; the batch is transformed on the training device, equal to float32 "
        "rounding), auto (device when training on a GPU)")
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = Field(1, ge=1, description="devices per machine; > 1: DDP (ddp_spawn in the stage's process)")
    num_nodes: int = Field(1, ge=1, le=4096, description="machines; > 1: the stage runs as a SLURM job of "
                           "num_nodes x devices processes (pretrain.slurm); global batch batch_size x devices x "
                           "num_nodes")
    launcher: Literal["local", "slurm"] = Field("local", description="local: train in the stage's own process; "
                                                "slurm: submit `idtprior train-stage` as a batch job and wait for it "
                                                "(always when num_nodes > 1)")
    slurm: TrainSlurmConfig = TrainSlurmConfig()
    seed: int = Field(0, ge=0, description="seeds every random choice of this section")

    @model_validator(mode="after")
    def _check_scales(self):
        if any(not 0 < c <= 1 for c in self.crop_scales):
            raise ValueError(f"crop_scales {list(self.crop_scales)} must each be in (0, 1]")
        return self


class TrainStageConfig(Section):
    """One training stage: its objective, cluster source, schedule and the stage it starts from."""

    objective: Literal["ir", "la"] = "la"
    cluster_source: Literal["idt", "bank", "joint"] = "idt"
    epochs: int = Field(200, ge=1)
    lr: float = Field(0.03, gt=0)
    lr_milestones: tuple[int, ...] = Field((), description="epochs (of this stage) at which lr *= lr_gamma")
    lr_gamma: float = Field(0.1, gt=0, le=1)
    init_from: str | None = Field(None, description="a training stage whose encoder and memory bank start this one")
    n_clusters: int = Field(6000, ge=1, description="k of the per-epoch K-means (cluster_source bank / joint)")
    kmeans_runs: int = Field(3, ge=1)
    kmeans_iters: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _check(self):
        if list(self.lr_milestones) != sorted(self.lr_milestones):
            raise ValueError(f"lr_milestones {list(self.lr_milestones)} must be increasing")
        if self.init_from is not None and self.init_from not in TRAIN_STAGES:
            raise ValueError(f"init_from {self.init_from!r} is not one of {list(TRAIN_STAGES)}")
        return self


class PretrainIRConfig(TrainStageConfig):
    """Instance Recognition warm-up (paper: 40 epochs)."""

    objective: Literal["ir", "la"] = "ir"
    epochs: int = Field(40, ge=1)


class PretrainLAConfig(TrainStageConfig):
    """Local Aggregation with the IDT clusters (paper: 200 epochs, lr x0.1 at 160 and 190), from the IR model."""

    epochs: int = Field(200, ge=1)
    lr_milestones: tuple[int, ...] = (160, 190)
    init_from: str | None = "pretrain_ir"


class TuneJointConfig(TrainStageConfig):
    """Local Aggregation in the joint [memory bank | IDT sketch] space, a few epochs from the LA model."""

    cluster_source: Literal["idt", "bank", "joint"] = "joint"
    epochs: int = Field(5, ge=1)
    lr: float = Field(0.003, gt=0)
    init_from: str | None = "pretrain_la"


class PretrainLABankConfig(TrainStageConfig):
    """Video LA, the paper's baseline: Local Aggregation whose close neighbours come from K-means of the memory bank
    every epoch (no IDT), with pretrain_la's schedule, from the IR model."""

    cluster_source: Literal["idt", "bank", "joint"] = "bank"
    epochs: int = Field(200, ge=1)
    lr_milestones: tuple[int, ...] = (160, 190)
    init_from: str | None = "pretrain_ir"


class SupervisedConfig(TrainStageConfig):
    """The supervised upper bound: the same 3D ResNet trained with cross-entropy on the training split's labels
    (``label_column``) through a linear classifier on its backbone features, from random weights."""

    objective: Literal["supervised"] = "supervised"
    label_column: str = Field("label", min_length=1, description="the label set trained on: the manifest's label, or "
                              "a column of pretrain.eval_labels_file; training videos without a value are left out "
                              "(counted in the record)")
    epochs: int = Field(200, ge=1)
    lr_milestones: tuple[int, ...] = (160, 190)


EVALUATION_NETWORKS = ("scratch", "pretrain_ir", "pretrain_la_bank", "pretrain_la", "tune_joint", "supervised")
"""The networks the evaluate stage compares by default, in the paper's order (``scratch``: the architecture at its
seeded random init); each other name is a training stage of the pretraining workspace."""


class EvaluateConfig(Section):
    """The evaluate stage: the pretraining workspace's networks on this workspace's labelled train/test splits (the
    paper's protocols: finetuning, the few-shot linear probe, kNN and the network's own K-means against the labels)."""

    pretrain_workspace: str | None = Field(None, description="the workspace whose trained networks are evaluated "
                                           "(read only); None: this workspace (the demo evaluates on its own splits)")
    networks: tuple[str, ...] = Field(EVALUATION_NETWORKS, min_length=1, description="scratch and/or training "
                                      "stages; with the default list a stage not trained is skipped with a warning, "
                                      "a stage listed by hand and not trained fails the stage naming it")
    protocols: tuple[Literal["finetune", "probe", "knn"], ...] = Field(("finetune", "probe", "knn"), min_length=1)
    clip_lengths: tuple[Literal[8, 16, 32], ...] = Field((16,), min_length=1, description="frames per clip (the "
                                                         "paper's Table 3: 8, 16, 32); one record per length")
    label_column: str = Field("label", min_length=1, description="the labels finetuned and probed: the manifest's "
                              "label, or a column of pretrain.eval_labels_file")
    train_split: str = Field("train", min_length=1, description="manifest split of the training videos")
    test_split: str = Field("test", min_length=1, description="manifest split of the test videos (read only to score)")
    frozen_blocks: Literal["auto"] | int = Field("auto", description="finetuning: 0 none, 1 conv1 + the first block, "
                                                 "2 up to the second, ... 4; auto: 2 for an HMDB51 split source, "
                                                 "else 1 (UCF101)")
    crop_size: int | None = Field(None, ge=8, description="None: the pretraining's pretrain.crop_size")
    frame_step: int | None = Field(None, ge=1, description="None: the pretraining's pretrain.frame_step")
    epochs: int = Field(100, ge=1, description="finetuning: at most; it also ends after lr_drops + 1 plateaus")
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    lr_drops: int = Field(3, ge=0, description="finetuning ends at the plateau after this many lr x0.1 drops")
    plateau_patience: int = Field(3, ge=0, description="epochs without validation improvement before lr x0.1")
    batch_size: int = Field(64, ge=1, description="clips per step (finetuning), per feature batch (probes)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="of each class's training videos, held out for the "
                                "plateau schedule (never test videos)")
    dropout: float = Field(0.0, ge=0, lt=1)
    test_clips: int = Field(5, ge=1, description="random centre-crop clips averaged per test video (finetuning "
                            "softmax, probe and kNN features)")
    shots: tuple[int | Literal["all"], ...] = Field((1, 5, 10, 20, "all"), min_length=1, description="few-shot "
                                                    "linear probe: training videos per class")
    shot_modes: tuple[Literal["first", "random"], ...] = Field(("first", "random"), min_length=1,
                                                               description="first: each class's first videos in id "
                                                               "order (the authors'); random: seeded draws")
    shot_seeds: int = Field(3, ge=1, le=100, description="random draws averaged per shot count")
    probe_c: float = Field(1.0, gt=0, description="the linear probe's inverse L2 strength")
    knn_k: int = Field(20, ge=1)
    knn_tau: float = Field(0.07, gt=0)
    device: str = Field("auto", description="auto (cuda where there is one), cpu, cuda, cuda:N")
    num_workers: int = Field(2, ge=0, description="clip-loading worker processes")
    frame_cache_mb: int = Field(4096, ge=0, description="the evaluation videos' decoded frames are read once and "
                                "kept in memory for all of the stage's evaluations when they fit in this many MB "
                                "(0: each evaluation reads the frame store); the same frames either way")
    seed: int = Field(0, ge=0, description="seeds every random choice of this section")

    @field_validator("networks")
    @classmethod
    def _known_networks(cls, networks):
        unknown = [n for n in networks if n not in ("scratch", *TRAIN_STAGES, *EVALUATION_NETWORKS)]
        if unknown:
            raise ValueError(f"unknown network(s) {unknown}; known: scratch and the training stages "
                             f"{list(TRAIN_STAGES)}")
        if len(set(networks)) != len(networks):
            raise ValueError(f"networks {list(networks)} lists a network twice")
        return networks

    @field_validator("frozen_blocks")
    @classmethod
    def _frozen(cls, value):
        if value != "auto" and not 0 <= value <= 4:
            raise ValueError(f"frozen_blocks {value} must be auto or 0-4")
        return value

    @field_validator("shots")
    @classmethod
    def _shots(cls, shots):
        bad = [s for s in shots if s != "all" and s < 1]
        if bad:
            raise ValueError(f"shots {bad} must be at least 1 (or 'all')")
        return shots
