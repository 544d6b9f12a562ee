"""Typed settings: one pydantic model per stage and a ``PipelineConfig`` holding them, loaded from YAML.

Every model forbids unknown keys and bounds its numbers, so a typo or an out-of-range value fails at load time with the
key path and the offending value in the message. Inside the package, stages take these models (or plain values).
"""

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from idtprior import keyscheme

STAGES = ("ingest", "decode", "detect", "idt", "fit_codebook", "encode", "cluster", "pretrain_ir", "pretrain_la",
          "tune_joint", "pretrain_la_bank", "supervised", "evaluate")
"""The stages that exist, in pipeline order. Later stages join this tuple when they land."""

TRAIN_STAGES = ("pretrain_ir", "pretrain_la", "tune_joint", "pretrain_la_bank", "supervised")
"""The network-training stages (one ``TrainStageConfig`` section each): the method's three, then the baselines of the
paper's tables (Video LA with the bank's clusters; the supervised upper bound)."""


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the key and the value."""


KEY_RULES = ("yes", "no", "default", "if:<field>=<value>")
"""How a setting enters its stage's cache key, declared on the field (``json_schema_extra={"key": rule}``; none:
"yes"). "no": it decides how the work runs, not what it computes (a device, a batch of independent videos); "default":
a setting added after workspaces existed, left out of the key while it has its default so their keys hold; "if:f=v":
keyed only while field ``f`` has value ``v`` (the JPEG quality with the JPEG codec)."""


def key(rule: str) -> dict:
    """``Field(..., json_schema_extra=key("no"))``: the field's key rule (``KEY_RULES``)."""
    if rule not in KEY_RULES[:3] and not (rule.startswith("if:") and "=" in rule):
        raise ValueError(f"key rule {rule!r}: expected one of {list(KEY_RULES)}")
    return {"key": rule}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def config_hash(self) -> str:
        """A stable hash of this section's values that change results: part of every cache key of the stage it
        configures (``key_rule`` says which)."""
        blob = json.dumps(self.model_dump(mode="json", exclude=set(self.unkeyed())), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def key_rule(cls, name: str) -> str:
        """The declared key rule of field ``name`` (``KEY_RULES``)."""
        extra = cls.model_fields[name].json_schema_extra
        return extra.get("key", "yes") if isinstance(extra, dict) else "yes"

    def core_params(self, cls):
        """The core's parameters (the dataclass ``cls``: ``IDTParams``, ``DetectParams``) from this section: every
        field of ``cls`` that the section declares, by name; the core's defaults for the rest. The one place a
        setting passes from the config to a core, so each is declared once (here) and checked once (by the core)."""
        names = {f.name for f in dataclasses.fields(cls)} & set(type(self).model_fields)
        return cls(**{n: getattr(self, n) for n in sorted(names)})

    def unkeyed(self) -> frozenset[str]:
        """The fields ``config_hash`` leaves out with these values, by their key rules; under the legacy key scheme
        (``idtprior.keyscheme``) without the settings that legacy keys still hashed."""
        out = set()
        for name, info in type(self).model_fields.items():
            rule = self.key_rule(name)
            if rule == "no" or (rule == "default" and getattr(self, name) == info.default):
                out.add(name)
            elif rule.startswith("if:"):
                other, _, value = rule[3:].partition("=")
                if str(getattr(self, other)) != value:
                    out.add(name)
        if keyscheme.legacy():
            out -= keyscheme.LEGACY_KEYED.get(type(self).__name__, frozenset())
        return frozenset(out)


class IngestConfig(_Section):
    """Where the videos come from and how they are split into chunks."""

    source: str | None = Field(None, description="folder of videos (recursive) or a list file; None: set on the CLI")
    source_format: Literal["auto", "folder", "kinetics_csv", "ucf_split", "path_list"] = "auto"
    video_root: str | None = Field(None, description="root that relative paths in a list file are resolved against")
    extensions: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
    labels_file: str | None = Field(None, description="optional CSV with columns video_id,label[,split]")
    num_chunks: int = Field(64, ge=1, le=1_000_000, description="videos go to chunk sha1(id) mod num_chunks; fixed so "
                            "adding a video touches one chunk")
    full_hash: bool = Field(False, description="fingerprint a new or changed file by a sha256 of all its bytes (reads "
                            "every byte) instead of its size and first and last MiB (misses a same-size edit in the "
                            "middle of a file over 2 MiB)")
    allowed_roots: tuple[str, ...] | None = Field(
        None, min_length=1, description="absolute folders the source, the labels file and every listed video must lie "
        "in once resolved (symlinks followed): a source outside is refused, a video outside is a failed row; None: "
        "no restriction (whoever can start a run can have the worker read any file it can)")

    @field_validator("allowed_roots")
    @classmethod
    def _absolute_roots(cls, roots):
        relative = [r for r in roots or () if not Path(r).expanduser().is_absolute()]
        if relative:
            raise ValueError(f"{relative} must be absolute paths (a relative one would depend on the worker's folder)")
        return roots


class DecodeConfig(_Section):
    """Frames kept for training."""

    short_side: int = Field(128, ge=16, le=4096)
    time_chunk: int = Field(16, ge=1, le=1024, description="frames per Zarr chunk along time")
    max_frames: int | None = Field(None, ge=1, description="keep at most this many frames per video (None: all)")
    codec: Literal["zstd", "jpeg"] = Field(
        "zstd", description="how the frames are stored: zstd (lossless) or jpeg (one JPEG per frame at jpeg_quality: "
                            "lossy, several times smaller; benchmarks/frame_codec.py)",
        json_schema_extra=key("default"))
    jpeg_quality: int = Field(90, ge=1, le=100, description="codec jpeg: the JPEG quality",
                              json_schema_extra=key("if:codec=jpeg"))


class DetectConfig(_Section):
    """Person boxes per frame, for IDT's camera-motion estimate (matches inside boxes are ignored)."""

    backend: Literal["ssdlite", "hog", "maskrcnn", "none"] = Field(
        "ssdlite", description="ssdlite: embedded MobileNetV2-SSDLite (cv2.dnn); hog: OpenCV's HOG people detector; "
        "maskrcnn: torchvision Mask R-CNN with local weights; none: no boxes")
    every: int = Field(1, ge=1, le=1000, description="detect on every k-th frame, carry boxes to the frames between")
    score_threshold: float = Field(0.5, description="keep boxes scoring at least this (probability; SVM margin "
                                   "for hog)")
    min_size: float = Field(8.0, ge=0, description="drop boxes narrower or lower than this (pixels of the frames "
                            "detected on)")
    max_side: int | None = Field(None, ge=32, description="detect on frames resized to this longer side (None: "
                                 "native); boxes are stored in the video's pixels")
    batch_size: int = Field(8, ge=1, le=4096, description="frames per detector call", json_schema_extra=key("no"))
    maskrcnn_weights: str | None = Field(None, description="local state-dict file of the maskrcnn backend (keyed by "
                                         "its content, not its path)", json_schema_extra=key("no"))
    maskrcnn_arch: str = Field("maskrcnn_resnet50_fpn", description="a torchvision.models.detection builder")
    maskrcnn_input_size: int = Field(800, ge=32, le=4096, description="Mask R-CNN's internal short side")
    device: str = Field("auto", description="maskrcnn: auto (cuda where there is one), cpu, cuda, cuda:N",
                        json_schema_extra=key("no"))
    bb_folder: str | None = Field(None, description="import boxes from <video_id>.bb[.gz] files in the reference "
                                  "IDT release's bb-file format instead of detecting")


class IDTConfig(_Section):
    """Improved Dense Trajectories (defaults of the reference release)."""

    scale_num: int = Field(8, ge=1, le=16)
    scale_stride: float = Field(math.sqrt(2), gt=1.0, le=4.0)
    init_gap: int = Field(1, ge=1)
    track_length: int = Field(15, ge=2, le=100)
    min_distance: int = Field(5, ge=1, le=64)
    quality: float = Field(0.001, gt=0, lt=1)
    patch_size: int = Field(32, ge=4, le=256)
    nxy_cell: int = Field(2, ge=1, le=8)
    nt_cell: int = Field(3, ge=1, le=15)
    max_side: int | None = Field(None, ge=32, description="resize larger frames to this longer side (None: native)")
    feature_detector: Literal["orb", "sift", "none"] = Field("orb", description="camera-motion keypoints (+ flow)")
    use_camera_compensation: bool = True
    sample_videos: int = Field(3500, ge=1, description="S: videos in the codebook sample")
    sample_rows: int = Field(500, ge=1, description="R: descriptors kept per sampled video")
    float16: bool = False
    seed: int = Field(0, ge=0, description="seeds every random choice of this section")
    backend: Literal["cpu", "torch"] = Field(
        "cpu", description="the extractor: 'cpu' (the reference: OpenCV and C kernels, one video per worker thread) or "
                           "'torch' (the batched PyTorch extractor on `device`, `batch_videos` videos at a time: the "
                           "CPU extractor's trajectories to float32 rounding); reference-release text files "
                           "(encode.idt_text_folder) are read the same way with either",
        json_schema_extra=key("default"))
    # How the work runs, not what it computes: the torch backend's rows on two devices agree to float rounding (as the
    # CPU extractor's do on two CPUs), and a batch's videos are extracted independently of each other.
    device: str | None = Field(None, description="torch backend: the torch device ('cuda', 'cuda:1', 'cpu'); None: "
                                                 "CUDA where available, else the CPU", json_schema_extra=key("no"))
    batch_videos: int = Field(16, ge=1, le=4096, description="torch backend: videos extracted together (their "
                                                               "decoded frames are held in memory)",
                              json_schema_extra=key("no"))
    torch_homography: Literal["cpu", "device"] = Field(
        "cpu", description="torch backend: the camera's homography by OpenCV's RANSAC per video beside the device "
                           "('cpu', the CPU extractor's own) or by the batched RANSAC on the device ('device': equal "
                           "on KTH, looser fits on generated pans)", json_schema_extra=key("if:backend=torch"))

    @model_validator(mode="after")
    def _check_layout(self):
        # What the extractor would refuse for every video, refused here, at load time, with the key and the value:
        # the core's own checks (IDTParams), on the parameters the stages will build.
        from idtprior.video.idt.params import IDTParams

        self.core_params(IDTParams)
        # The codebook, the Fisher encoding and the reference release's text format all use the release's 426
        # descriptor columns (trajectory 2 x 15, HOG/HOF/MBH over 2 x 2 x 3 cells); another layout would only fail
        # later, in fit_codebook ("420 columns" for track_length 12), after hours of IDT.
        layout = {"track_length": 15, "nxy_cell": 2, "nt_cell": 3}
        changed = {k: getattr(self, k) for k, v in layout.items() if getattr(self, k) != v}
        if changed:
            cells = self.nxy_cell * self.nxy_cell * self.nt_cell
            columns = 2 * self.track_length + cells * (8 + 9 + 8 + 8)
            raise ValueError(
                f"{', '.join(f'{k}={v}' for k, v in changed.items())} gives {columns} descriptor columns; the codebook, "
                f"the Fisher encoding and the release's text format use its 426 (track_length 15, nxy_cell 2, "
                f"nt_cell 3): only that layout is supported in the pipeline (`idtprior idt` extracts others)")
        return self


class CodebookConfig(_Section):
    """PCA + diagonal GMM fitted on the IDT sample, and the count sketch."""

    pca_mode: Literal["concat", "per_type"] = "concat"
    pca_variance: float = Field(0.9, gt=0, le=1)
    gmm_components: int = Field(256, ge=1, le=65536)
    gmm_iters: int = Field(100, ge=1, le=10000)
    sketch_dim: int = Field(2000, ge=1)
    seed: int = Field(0, ge=0, description="seeds every random choice of this section")


class EncodeConfig(_Section):
    """IDT fused with Fisher encoding and the count sketch, per video."""

    keep_descriptors: bool = Field(False, description="also store each video's raw IDT rows (terabytes at scale)")
    idt_text_folder: str | None = Field(None, description="read <video_id>.txt[.gz] reference-release IDT files "
                                        "from here instead of running IDT")


class ClusterConfig(_Section):
    """K-means on the sketches."""

    k: int = Field(6000, ge=2)
    runs: int = Field(3, ge=1, le=100)
    iters: int = Field(20, ge=1, le=10000)
    n_init: int = Field(1, ge=1, le=1000, description="k-means restarts per run; each run keeps its lowest-inertia one")
    backend: Literal["numpy", "faiss"] = Field(
        "numpy", description="the k-means implementation: numpy (the reference) or faiss (needs faiss-cpu; other "
        "labels for the same seed); chosen here, never by what happens to be installed",
        json_schema_extra=key("default"))
    seed: int = Field(0, ge=0, description="seeds every random choice of this section")


class TrainSlurmConfig(_Section):
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


class PretrainConfig(_Section):
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


class TrainStageConfig(_Section):
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


class SlurmConfig(_Section):
    """``dask.cluster: slurm``: Dask workers as SLURM batch jobs (dask-jobqueue's ``SLURMCluster``), one job per
    ``cores`` cores; the scheduler runs in the flow's process and the jobs connect back to it."""

    queue: str | None = Field(None, description="partition (sbatch -p); None: the site's default")
    account: str | None = Field(None, description="account charged (sbatch -A)")
    cores: int = Field(8, ge=1, le=4096, description="cores per job")
    processes: int | None = Field(None, ge=1, le=4096, description="Dask worker processes per job, sharing its cores "
                                  "(None: one per core, single-threaded, like the LocalCluster's)")
    memory: str = Field("16GB", description="memory per job, split among its processes (e.g. 16GB, 64GiB)")
    walltime: str = Field("01:00:00", pattern=r"^(\d+-)?\d{1,3}:\d{2}(:\d{2})?$",
                          description="time limit per job (sbatch -t), [D-]HH:MM[:SS]")
    jobs: int = Field(2, ge=1, le=100_000, description="jobs submitted while the stage runs")
    job_extra_directives: tuple[str, ...] = Field((), description="more #SBATCH lines, e.g. ['--qos=normal']")
    job_script_prologue: tuple[str, ...] = Field((), description="shell lines run before the worker starts, e.g. "
                                                 "['source /opt/idtprior/.venv/bin/activate']")
    python: str | None = Field(None, description="python on the compute nodes (None: the flow's own interpreter)")
    interface: str | None = Field(None, description="network interface the scheduler and workers listen on, e.g. "
                                  "ib0 (None: the scheduler listens on every interface of its host)")
    local_directory: str | None = Field(None, description="worker scratch folder on the compute node, e.g. $TMPDIR")
    log_directory: str | None = Field(None, description="folder for the jobs' stdout/stderr (None: sbatch's default)")
    dashboard_address: str = Field("127.0.0.1:8787", description="the scheduler's HTTP endpoints (the dashboard "
                                   "where bokeh is installed, health, metrics); 127.0.0.1 keeps them off the network")

    @model_validator(mode="after")
    def _check_memory(self):
        from dask.utils import parse_bytes

        try:
            parse_bytes(self.memory)
        except ValueError as e:
            raise ValueError(f"memory {self.memory!r} is not a size like 16GB or 64GiB") from e
        if self.processes is not None and self.processes > self.cores:
            raise ValueError(f"processes {self.processes} exceeds cores {self.cores}: each process needs a core")
        return self


class DaskConfig(_Section):
    """Where per-video work inside a chunk runs."""

    address: str | None = Field(None, description="existing scheduler, e.g. tcp://host:8786; None: a new cluster "
                                "(below)")
    cluster: Literal["local", "slurm"] = Field("local", description="the cluster made when no address is given: a "
                                               "LocalCluster on this machine or SLURM jobs (section slurm)")
    n_workers: int = Field(2, ge=0, le=4096, description="LocalCluster workers; 0: run in the flow process")
    threads_per_worker: int = Field(1, ge=1, le=256)
    processes: bool = True
    host: str = Field("127.0.0.1", description="LocalCluster of processes: the address its scheduler and workers "
                      "listen on; 127.0.0.1 keeps them off the network (threads, processes: false, talk in memory)")
    slurm: SlurmConfig = SlurmConfig()


EVALUATION_NETWORKS = ("scratch", "pretrain_ir", "pretrain_la_bank", "pretrain_la", "tune_joint", "supervised")
"""The networks the evaluate stage compares by default, in the paper's order (``scratch``: the architecture at its
seeded random init); each other name is a training stage of the pretraining workspace."""


class EvaluateConfig(_Section):
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


PoolsConfig = create_model(
    "PoolsConfig", __base__=_Section, __doc__="The work pool each stage's run goes to when the pipeline runs from a "
    "deployment: auto (training and Mask R-CNN detection on the GPU pool, the rest on the CPU pool), cpu or gpu.",
    **{stage: (Literal["auto", "cpu", "gpu"], Field("auto", description=f"the pool of {stage}'s runs"))
       for stage in STAGES})
"""One ``auto | cpu | gpu`` field per stage, generated from ``STAGES`` (a stage added there gets its field)."""


class DemoDataConfig(_Section):
    """The synthetic motion benchmark (embedded demo data)."""

    videos_per_class: int = Field(40, ge=1, le=100000)
    frames: int = Field(64, ge=2, le=100000)
    width: int = Field(160, ge=16, le=4096)
    height: int = Field(120, ge=16, le=4096)
    fps: int = Field(25, ge=1, le=240)
    camera_motion_fraction: float = Field(0.3, ge=0, le=1)
    test_fraction: float = Field(0.3, gt=0, lt=1)
    seed: int = Field(0, ge=0, description="seeds every random choice of this section")
    heldout_appearance: bool = Field(False, description="test videos whose backgrounds, actor shapes and colours "
                                                        "never occur in training")


class PipelineConfig(_Section):
    """Everything a pipeline run needs. ``workspace`` may be a local path or an fsspec URL."""

    workspace: str = "workspace"
    stages: tuple[str, ...] = STAGES
    chunk_concurrency: int = Field(4, ge=1, le=1024, description="chunk task runs in flight at once")
    ingest: IngestConfig = IngestConfig()
    decode: DecodeConfig = DecodeConfig()
    detect: DetectConfig = DetectConfig()
    idt: IDTConfig = IDTConfig()
    codebook: CodebookConfig = CodebookConfig()
    encode: EncodeConfig = EncodeConfig()
    cluster: ClusterConfig = ClusterConfig()
    pretrain: PretrainConfig = PretrainConfig()
    pretrain_ir: PretrainIRConfig = PretrainIRConfig()
    pretrain_la: PretrainLAConfig = PretrainLAConfig()
    tune_joint: TuneJointConfig = TuneJointConfig()
    pretrain_la_bank: PretrainLABankConfig = PretrainLABankConfig()
    supervised: SupervisedConfig = SupervisedConfig()
    dask: DaskConfig = DaskConfig()
    pools: PoolsConfig = PoolsConfig()
    demo: DemoDataConfig = DemoDataConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages):
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known stages: {list(STAGES)}")
        return stages

    @field_validator("workspace")
    @classmethod
    def _workspace_is_a_folder(cls, workspace):
        # a local path whose first existing part is a file cannot become the workspace folder: refused here, where
        # the key is known, instead of a traceback from makedirs when the run starts
        if "://" in workspace and not workspace.startswith("file://"):
            return workspace
        path = Path(workspace.removeprefix("file://")).expanduser()
        try:
            for part in (path, *path.parents):
                if part.exists():
                    if not part.is_dir():
                        inside = "" if part == path else f" (it would be inside {part})"
                        raise ValueError(f"{part} is a file, not a folder{inside}")
                    break
        except OSError as e:  # a name too long, a folder that cannot be searched
            raise ValueError(f"cannot be used as a folder: {e}") from e
        return workspace

    def with_updates(self, **sections) -> "PipelineConfig":
        """A copy with some values replaced, validated: ``cfg.with_updates(decode={"short_side": 64})``."""
        data = self.model_dump()
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return parse_config(data, origin="updates")


def parse_config(data: dict, origin: str = "config") -> PipelineConfig:
    """Validate a mapping into a ``PipelineConfig``; errors name the key path and the offending value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: top level must be a mapping, got {type(data).__name__}: {data!r}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            value = err.get("input")
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown key '{key}' (value {value!r})")
            else:  # a validator's own message without pydantic's "Value error, " in front
                msg = err["msg"].removeprefix("Value error, ")
                shown = repr(value)
                if len(shown) > 300:  # a model-level check gets the whole section as its value
                    shown = shown[:150] + " ... " + shown[-100:]
                lines.append(f"key '{key}': {msg} (value {shown})")
        raise ConfigError(f"{origin}: " + "; ".join(lines)) from e


def load_config(path: str | Path) -> PipelineConfig:
    """Load a YAML config file into a ``PipelineConfig``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read: {e}") from e
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not valid YAML: {_yaml_problem(e)}") from e
    return parse_config(data, origin=f"config {path}")


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: where, what, and the construct it was in (PyYAML's own text spans five)."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(e).split())
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context:
        text += f" ({context}" + (f" at line {start.line + 1}, column {start.column + 1})" if start else ")")
    return text


def bundled_config(name: str) -> Path:
    """Path of a config shipped with the package: ``bundled_config("demo")``."""
    path = Path(__file__).parent / "configs" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"no bundled config named {name!r} (looked for {path})")
    return path
