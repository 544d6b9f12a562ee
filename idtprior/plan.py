"""``idtprior plan``: what a run of a config costs, per stage, before it starts.

Each stage's cost is a count of work units (frames decoded, frames through IDT, descriptor rows encoded, k-means row x
centroid x dimension products, training clips x the network's multiply-accumulates, ...) times the seconds one unit
takes on one core (or one GPU). The per-unit seconds come from ``idtprior.units`` (``measure_units``): stored in the package
(``plan_units.json``, written by ``benchmarks/plan_units.py`` with the machine it ran on), or measured on the current
machine in under a minute (``--calibrate``). The videos measured are generated ones (``textured_pan_video``), never a
workspace's, so a plan never learns from the run it predicts.

Wall time of a CPU stage: its core-seconds over the cores, plus the orchestration's fixed cost per stage and its
serial cost per video (``benchmarks/pipeline_overhead.py``). A GPU training stage: clips over the GPUs' clips/s (linear
in GPUs: DDP), with the loader's core-seconds beside it.
"""

import math
import re
from dataclasses import dataclass

from idtprior.config import PipelineConfig
from idtprior.config.training import TRAIN_STAGES as TRAINING_STAGES
from idtprior.units import DESCRIPTOR_COLUMNS, JPEG_UNIT_QUALITY, Units, network_cost


@dataclass
class StagePlan:
    stage: str
    core_hours: float
    gpu_hours: float
    wall_s: float
    storage_bytes: float
    basis: str  # the work counted


# The cluster stage's montage: the IDT tracks of 6 clusters x 4 member videos (stages.cluster.cluster_markdown's
# defaults; a test holds them equal)
MONTAGE_CLUSTERS, MONTAGE_PER_CLUSTER = 6, 4
MONTAGE_VIDEOS = MONTAGE_CLUSTERS * MONTAGE_PER_CLUSTER


def one_scale_idt_s(units: Units, height: int, width: int, idt_config) -> float:
    """Seconds a frame of IDT at the finest scale alone (the pictures' ``drawing_params``) on ``height x width`` frames:
    the per-frame unit, and the per-megapixel unit over the scale pyramid's area (the units are the whole pyramid's)."""
    from idtprior.stages.idt import idt_params
    from idtprior.video.idt.extract import pyramid_scales

    scales = pyramid_scales(height, width, idt_params(idt_config))
    area = sum(h * w for _, (h, w) in scales) / (height * width) if scales else 1.0
    return units.idt_s_per_frame + units.idt_s_per_mpix * height * width / 1e6 / area


def kmeans_seconds(units: Units, rows: int, k: int, dim: int, iters: int, calls: int,
                   init: str = "auto") -> tuple[float, float]:
    """(seconds of the distance products, seconds of the rest) of ``calls`` k-means runs of ``iters`` Lloyd iterations
    (encoding.kmeans, NumPy) on ``rows x dim``, timed on one thread. Each iteration has a fixed cost, one per data
    value (the centroids' sums, the norms) and one per row x centroid x dim (the distances, a matrix product); each
    call its seeding (k-means++: k - 1 sequential steps, each a fixed cost and the distances of 2 + ln k candidates
    to a subsample) and its final assignment, one more iteration. The products are BLAS's, which spreads them over
    the cores of the process; the rest runs on one. At small K (the demo's 12) the fixed and per-value parts are
    most of it: the distances alone counted a fifth of the demo's k-means."""
    from idtprior.encoding.kmeans import KPP_AUTO_FLOPS

    products = (iters + 1) * rows * k * dim * units.kmeans_s_per_row_centroid_dim
    rest = (iters + 1) * (units.kmeans_s_per_iteration + rows * dim * units.kmeans_s_per_row_dim)
    sub = min(rows, max(8 * k, 4096))
    if init == "auto":
        init = "k-means++" if k * sub * dim * (2 + math.log(k)) <= KPP_AUTO_FLOPS else "random"
    if init == "k-means++":
        products += (k - 1) * (2 + int(math.log(k))) * sub * dim * units.kmeans_s_per_seed_distance
        rest += (k - 1) * units.kmeans_s_per_seed_step
    return calls * products, calls * rest


def plan(cfg: PipelineConfig, units: Units, videos: int, mean_seconds: float = 10.0, fps: float = 25.0,
         width: int = 340, height: int = 256, cores: int = 16, gpus: int = 0, train_fraction: float | None = None,
         stages: list[str] | None = None) -> list[StagePlan]:
    """Per stage of ``stages`` (default the config's): core-hours, GPU-hours, wall seconds and bytes stored."""
    from idtprior.video.io import resized_shape

    stages = list(stages or cfg.stages)
    frames = videos * mean_seconds * fps
    src_mpix = width * height / 1e6
    ih, iw = resized_shape(height, width, max_side=cfg.idt.max_side) if cfg.idt.max_side else (height, width)
    idt_mpix = ih * iw / 1e6
    dh, dw = resized_shape(height, width, short_side=cfg.decode.short_side)
    stored_frames = frames if cfg.decode.max_frames is None else videos * min(cfg.decode.max_frames,
                                                                              mean_seconds * fps)
    idt_frame_s = units.idt_s_per_frame + units.idt_s_per_mpix * idt_mpix
    rows_per_video = units.idt_rows_per_mpix * idt_mpix * mean_seconds * fps
    if train_fraction is None:
        train_fraction = 1.0 if cfg.pretrain.train_split is None else 0.7
    n_train = max(1, round(videos * train_fraction))
    out: list[StagePlan] = []

    def cpu(stage: str, core_s: float, per_video: int, storage: float, basis: str, serial_s: float = 0.0) -> None:
        """``core_s`` spread over the cores, ``serial_s`` in the flow's one process after them."""
        fixed = {"ingest": units.ingest_overhead_s, "decode": units.fanout_overhead_s, "detect": units.fanout_overhead_s,
                 "idt": units.fanout_overhead_s, "encode": units.fanout_overhead_s}.get(stage, units.stage_overhead_s)
        wall = core_s / cores + serial_s + fixed + per_video * units.video_overhead_s
        out.append(StagePlan(stage, (core_s + serial_s) / 3600, 0.0, wall, storage, basis))

    for stage in stages:
        if stage == "ingest":
            cpu(stage, videos * units.probe_s_per_video, videos, videos * 300.0, f"{videos} videos probed")
        elif stage == "decode":
            s = frames * (units.decode_s_per_frame + units.decode_s_per_mpix * src_mpix)
            ratio, codec = units.frame_bytes_ratio, "zstd"
            if cfg.decode.codec == "jpeg" and units.frame_bytes_ratio_jpeg:
                ratio, codec = units.frame_bytes_ratio_jpeg, f"jpeg, measured at quality {JPEG_UNIT_QUALITY}"
            elif cfg.decode.codec == "jpeg":
                codec = "jpeg not measured: zstd's size"
            cpu(stage, s, videos, stored_frames * dh * dw * 3 * ratio,
                f"{frames:.3g} frames of {width}x{height} to short side {cfg.decode.short_side}, "
                f"{dh * dw * 3 * ratio / 1000:.1f} KB a stored frame ({codec})")
        elif stage == "detect":
            n = frames / cfg.detect.every
            s = frames * (units.decode_s_per_frame + units.decode_s_per_mpix * src_mpix) + n * units.detect_s_per_frame
            cpu(stage, s, videos, n * 5 * 20.0, f"{n:.3g} frames detected (every {cfg.detect.every}), ssdlite on CPU")
        elif stage == "idt":
            k = min(cfg.idt.sample_videos, videos)
            s = k * mean_seconds * fps * (idt_frame_s + units.decode_s_per_frame + units.decode_s_per_mpix * src_mpix)
            rows = k * min(cfg.idt.sample_rows, rows_per_video)
            cpu(stage, s, k, rows * 436 * 4, f"IDT on {k} sampled videos ({idt_mpix * 1e6:.0f} px frames)")
        elif stage == "fit_codebook":
            rows = min(cfg.idt.sample_videos, videos) * min(cfg.idt.sample_rows, rows_per_video)
            dims = DESCRIPTOR_COLUMNS * cfg.codebook.pca_variance / 2 if cfg.codebook.pca_mode == "concat" \
                else DESCRIPTOR_COLUMNS / 2
            iters = max(1.0, cfg.codebook.gmm_iters * units.em_iters_fraction)
            s = rows * cfg.codebook.gmm_components * dims * iters * units.em_s_per_row_component_dim
            # EM runs in the flow's one process, on chunks of 4096 rows: its element-wise work is numpy's, on one
            # thread, and BLAS threads gain nothing on the demo's blocks (2 cores: 3.3 s with one thread, 3.5 with
            # two) and 1.4-1.5x on Kinetics' (K=256, D=213): counted as serial, an upper bound where blocks are large
            cpu(stage, 0.0, 0, cfg.codebook.gmm_components * dims * 12.0,
                f"~{iters:.0f} EM iterations (at most {cfg.codebook.gmm_iters}) over {rows:.3g} rows, "
                f"K={cfg.codebook.gmm_components}, in one process", serial_s=s)
        elif stage == "encode":
            s = videos * mean_seconds * fps * (idt_frame_s + units.decode_s_per_frame
                                                + units.decode_s_per_mpix * src_mpix)
            s += videos * rows_per_video * cfg.codebook.gmm_components * \
                units.fisher_s_per_row_component[cfg.codebook.pca_mode]
            cpu(stage, s, videos, videos * cfg.codebook.sketch_dim * 4.0,
                f"IDT + Fisher vector + sketch of {videos} videos ({rows_per_video:.0f} trajectories each)")
        elif stage == "cluster":
            c = cfg.cluster
            products, rest = kmeans_seconds(units, videos, c.k, cfg.codebook.sketch_dim, c.iters, c.runs * c.n_init)
            # its montage, in the flow's process: the IDT tracks of a window ending at the middle frame of each drawn
            # video, on the stored frames, at the finest scale
            m = min(videos, min(c.k, MONTAGE_CLUSTERS) * MONTAGE_PER_CLUSTER)  # at most: a cluster may hold fewer
            montage_s = m * (cfg.idt.track_length + 1) * one_scale_idt_s(units, dh, dw, cfg.idt)
            # k-means runs in the stage's one task, in the flow's process: its products on BLAS's threads, the rest
            # serial, like the montage
            cpu(stage, products, 0, c.runs * c.k * cfg.codebook.sketch_dim * 4.0 + videos * c.runs * 8.0,
                f"{c.runs * c.n_init} k-means runs x {c.iters} iterations, K={c.k}, {videos} x {cfg.codebook.sketch_dim}"
                f"; the montage's IDT tracks of {m} videos", serial_s=rest + montage_s)
        elif stage in TRAINING_STAGES:
            out.append(_training(cfg, units, stage, videos, n_train, cores, gpus))
        else:
            out.append(StagePlan(stage, float("nan"), float("nan"), float("nan"), float("nan"),
                                 "not modelled (evaluation: its cost depends on the labelled set)"))
    return out


def _training(cfg: PipelineConfig, units: Units, stage: str, videos: int, n_train: int, cores: int,
              gpus: int) -> StagePlan:
    p, st = cfg.pretrain, getattr(cfg, stage)
    gmac, params = network_cost(p.arch, p.width, p.embed_dim, p.clip_length, p.crop_size)
    clips = st.epochs * n_train
    read_mpix = p.clip_length * cfg.decode.short_side * cfg.decode.short_side * 4 / 3 / 1e6
    # the stage embeds every video twice besides training: with the initial network (the knn_init table) and the
    # trained one (the exported embeddings)
    loader_s = (clips + 2 * videos) * units.loader_s_per_mpix * read_mpix
    devices = gpus if gpus > 0 and p.accelerator != "cpu" else 0
    if devices and p.augment_on != "loader":  # the workers read and crop; the device transforms (DeviceAugment)
        loader_s = clips * units.loader_raw_s_per_mpix * read_mpix + 2 * videos * units.loader_s_per_mpix * read_mpix
    kmeans_s = 0.0
    if st.objective == "la" and st.cluster_source in ("bank", "joint"):
        dim = p.embed_dim + (cfg.codebook.sketch_dim if st.cluster_source == "joint" else 0)
        kmeans_s = sum(kmeans_seconds(units, n_train, st.n_clusters, dim, st.kmeans_iters, st.epochs * st.kmeans_runs))
    # checkpoints: last + 2 epochs' (weights, SGD momentum, bank) and the exported encoder, bank, embeddings
    ckpt = 3 * (params * 4 * 2 + n_train * p.embed_dim * 4) + params * 4 + (n_train + videos) * p.embed_dim * 4
    if devices and units.gpu:
        gpu_rate = units.gpu["train_clips_per_s"] * units.gpu["gmac_per_clip"] / gmac  # clips/s on one GPU
        gpu_s = clips / gpu_rate + 2 * videos / (gpu_rate * 3)  # a forward pass: about a third of a step
        core_s = loader_s + kmeans_s
        wall = max(gpu_s / devices, core_s / cores) + units.train_stage_overhead_s + \
            st.epochs * units.stage_epoch_overhead_s
        return StagePlan(stage, core_s / 3600, gpu_s / 3600, wall, ckpt,
                         f"{st.epochs} epochs x {n_train} clips on {devices} GPU(s) ({units.gpu['name']}), "
                         f"{gmac:.2f} GMAC a clip")
    core_s = clips * gmac * units.train_s_per_gmac + 2 * videos * gmac * units.embed_s_per_gmac + loader_s + kmeans_s
    # in one process, not spread over the cores; the pipeline's per-epoch and fixed costs include train()'s
    fixed = max(units.train_setup_s + st.epochs * units.epoch_overhead_s,
                units.train_stage_overhead_s + st.epochs * units.stage_epoch_overhead_s)
    return StagePlan(stage, (core_s + fixed) / 3600, 0.0, core_s / cores + fixed, ckpt,
                     f"{st.epochs} epochs x {n_train} clips on CPU, {gmac:.3f} GMAC a clip")


def stage_wall_seconds(output: str) -> dict[str, float]:
    """Each stage's wall seconds from the run's closing line ``wall time per stage: a 3.1 s, b 2.9 min; total ...``."""
    line = next(ln for ln in output.splitlines() if ln.startswith("wall time per stage:"))
    return {stage: float(value) * (60 if unit == "min" else 1)
            for stage, value, unit in re.findall(r"(\w+) ([\d.]+) (s|min)", line.split(";")[0])}


def _human_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "-"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _human_bytes(b: float) -> str:
    if not math.isfinite(b):
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if b < 1000 or unit == "PB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1000
    return ""


def format_plan(rows: list[StagePlan], units: Units, header: str) -> str:
    lines = [header, f"per-unit costs: {units.how}, measured {units.measured} on {units.machine}"
             + (f"; GPU figures: {units.gpu['name']} ({units.gpu.get('source', '')})" if units.gpu else ""), "",
             "| stage | core-hours | GPU-hours | wall | storage | counted |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.stage} | {r.core_hours:.3g} | {r.gpu_hours:.3g} | {_human_seconds(r.wall_s)} | "
                     f"{_human_bytes(r.storage_bytes)} | {r.basis} |")
    finite = [r for r in rows if math.isfinite(r.wall_s)]
    lines.append(f"| total | {sum(r.core_hours for r in finite):.3g} | {sum(r.gpu_hours for r in finite):.3g} | "
                 f"{_human_seconds(sum(r.wall_s for r in finite))} | "
                 f"{_human_bytes(sum(r.storage_bytes for r in finite))} | stages run one after another |")
    return "\n".join(lines)


__all__ = ["StagePlan", "format_plan", "plan", "stage_wall_seconds"]
