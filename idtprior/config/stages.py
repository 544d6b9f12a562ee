"""The data stages' sections: ingest, decode, detect, idt, fit_codebook (``codebook``), encode, cluster."""

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from idtprior.config.base import Section, key


class IngestConfig(Section):
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


class DecodeConfig(Section):
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


class DetectConfig(Section):
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


class IDTConfig(Section):
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


class CodebookConfig(Section):
    """PCA + diagonal GMM fitted on the IDT sample, and the count sketch."""

    pca_mode: Literal["concat", "per_type"] = "concat"
    pca_variance: float = Field(0.9, gt=0, le=1)
    gmm_components: int = Field(256, ge=1, le=65536)
    gmm_iters: int = Field(100, ge=1, le=10000)
    sketch_dim: int = Field(2000, ge=1)
    seed: int = Field(0, ge=0, description="seeds every random choice of this section")


class EncodeConfig(Section):
    """IDT fused with Fisher encoding and the count sketch, per video."""

    keep_descriptors: bool = Field(False, description="also store each video's raw IDT rows (terabytes at scale)")
    idt_text_folder: str | None = Field(None, description="read <video_id>.txt[.gz] reference-release IDT files "
                                        "from here instead of running IDT")


class ClusterConfig(Section):
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
