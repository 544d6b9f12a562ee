"""The per-unit seconds a run's cost is counted in (``Units``): seconds per decoded frame, per frame through IDT, per
encoded descriptor row, per k-means product, per training clip, and the orchestration's own costs; stored in the
package (``plan_units.json``, written by ``benchmarks/plan_units.py`` with the machine it ran on) or measured on this
machine in under a minute (:func:`measure_units`, ``idtprior plan --calibrate``). The videos measured are generated
ones (``textured_pan_video``), never a workspace's, so a plan never learns from the run it predicts. ``idtprior.plan``
counts the units a config's run takes."""

import json
import logging
import math
import os
import platform
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

UNITS_PATH = Path(__file__).with_name("plan_units.json")
DESCRIPTOR_COLUMNS = 426  # HOG 96 + HOF 108 + MBHx 96 + MBHy 96 + trajectory shape 30


ORCHESTRATION_UNITS = ("stage_overhead_s", "ingest_overhead_s", "fanout_overhead_s", "video_overhead_s",
                       "stage_epoch_overhead_s", "train_stage_overhead_s")
"""Units of ``benchmarks/pipeline_overhead.py`` (a pipeline run): a calibration keeps the stored ones."""


@dataclass
class Units:
    """Seconds per unit of work on one core of ``machine`` (or one GPU, in ``gpu``), and the stored frames' bytes."""

    machine: str
    measured: str  # date
    how: str  # which benchmark or calibration measured them
    probe_s_per_video: float
    decode_s_per_frame: float  # decode + resize + store a frame, every core decoding (decode_units)
    decode_s_per_mpix: float  # ... and per further source megapixel
    frame_bytes_ratio: float  # stored (compressed) bytes / raw bytes of decoded frames (zstd)
    idt_s_per_frame: float  # IDT at idt_mpix; linear in the frame's megapixels (a + b * mpix)
    idt_s_per_mpix: float
    idt_rows_per_mpix: float  # trajectories per frame per megapixel of the measured video (content-dependent)
    fisher_s_per_row_component: dict[str, float]  # Fisher vector + sketch, per pca_mode
    em_s_per_row_component_dim: float  # one EM iteration
    em_iters_fraction: float  # EM iterations to convergence / gmm_iters (measured with gmm_iters 100, default tol)
    kmeans_s_per_row_centroid_dim: float  # one Lloyd iteration, per distance term (see kmeans_seconds)
    train_s_per_gmac: float  # CPU: forward + backward + SGD step, per GMAC of the clip's forward pass
    embed_s_per_gmac: float  # CPU: forward pass only
    loader_s_per_mpix: float  # reading + transforming a clip from the frame store, per megapixel read
    loader_raw_s_per_mpix: float  # reading + cropping only (augment_on: device, the GPU path), per megapixel read
    epoch_overhead_s: float  # a training epoch's own cost on the CPU (checkpoints, kNN monitor, Lightning's loop)
    train_setup_s: float  # a training run's fixed cost (trainer set-up, export of encoder and bank)
    detect_s_per_frame: float  # the embedded ssdlite detector, one frame
    stage_overhead_s: float = 3.0  # orchestration: fixed seconds of a stage run in the flow's process (fit_codebook,
    # cluster: its subflow, task, record, summary), beyond the work plan counts (benchmarks/pipeline_overhead.py)
    ingest_overhead_s: float = 3.0  # ... of ingest (the listing, the manifest; no frames)
    fanout_overhead_s: float = 3.0  # ... of a stage that fans videos out to Dask workers (decode, detect, idt, encode)
    video_overhead_s: float = 0.0  # orchestration: serial seconds per video of a per-video stage
    stage_epoch_overhead_s: float = 0.0  # a training stage in the pipeline: seconds per epoch beyond train()'s own
    train_stage_overhead_s: float = 0.0  # ... and its fixed seconds (benchmarks/pipeline_overhead.py)
    gpu: dict[str, Any] = field(default_factory=dict)  # measured on a lent GPU: name, train_clips_per_s, gmac_per_clip
    frame_bytes_ratio_jpeg: float = 0.0  # ... with decode.codec jpeg at JPEG_UNIT_QUALITY (0: not measured)
    kmeans_s_per_iteration: float = 0.0  # a Lloyd iteration's fixed seconds (its NumPy calls), whatever its size
    kmeans_s_per_row_dim: float = 0.0  # ... and per value of the data (the centroids' sums, the row norms)
    kmeans_s_per_seed_step: float = 0.0  # a k-means++ step's fixed seconds (one of k - 1 sequential steps)
    kmeans_s_per_seed_distance: float = 0.0  # ... and per candidate x row x dim (a narrow product: slower a term)

    @classmethod
    def load(cls, path: str | Path = UNITS_PATH) -> "Units":
        return cls(**json.loads(Path(path).read_text()))

    def save(self, path: str | Path = UNITS_PATH) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")


JPEG_UNIT_QUALITY = 90  # the quality frame_bytes_ratio_jpeg is measured at


def machine_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def network_cost(arch: str, width: float, embed_dim: int, clip_length: int, crop: int) -> tuple[float, int]:
    """(GMACs of one clip's forward pass, parameters) of the 3D ResNet, counted on the meta device (no compute)."""
    import torch

    from idtprior.models.resnet3d import resnet3d

    with torch.device("meta"):
        net = resnet3d(arch, embed_dim, width).eval()
    macs = [0]

    def count(module, inputs, output) -> None:
        if isinstance(module, torch.nn.Conv3d):
            k = module.weight.shape[1] * math.prod(module.weight.shape[2:])
            macs[0] += output.numel() * k
        elif isinstance(module, torch.nn.Linear):
            macs[0] += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear))]
    with torch.no_grad():
        net(torch.empty(1, 3, clip_length, crop, crop, device="meta"))
    for h in hooks:
        h.remove()
    return macs[0] / 1e9, sum(p.numel() for p in net.parameters())


def _best(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _line(points: dict[float, float]) -> tuple[float, float]:
    """(intercept, slope) of the line through two (x, y) points."""
    (x0, y0), (x1, y1) = sorted(points.items())
    slope = (y1 - y0) / (x1 - x0)
    return y0 - slope * x0, slope


def _idt_units(out: dict[str, Any], videos: dict[tuple[int, int], list[np.ndarray]], repeats: int) -> dict:
    """IDT's units into ``out`` (seconds a frame: a line through the videos' two frame sizes in megapixels; rows a
    megapixel of frames) from extracting each of ``videos`` ((h, w) -> frames), best of ``repeats``; returns the rows
    extracted per size."""
    from idtprior.video.idt import IDTParams, extract_idt

    idt, rows, per_frame = {}, {}, []
    for (h, w), frames in videos.items():
        got: list = []
        idt[h * w / 1e6] = _best(lambda got=got, frames=frames: got.append(extract_idt(iter(frames), IDTParams())), repeats) / len(frames)
        rows[h * w / 1e6] = got[-1]
        per_frame.append(len(got[-1]) / len(frames) / (h * w / 1e6))
    out["idt_s_per_frame"], out["idt_s_per_mpix"] = _line(idt)
    out["idt_rows_per_mpix"] = float(np.mean(per_frame))
    return rows


def _decode_seconds(paths: dict[float, str], frames: int, repeats: int, start=None) -> dict[float, float]:
    """Seconds a frame of decode + resize to short side 128 + zstd store, one thread, best of ``repeats``, for each
    of ``paths`` (source megapixels -> a video of ``frames`` frames), into a Zarr group of its own; ``start``: a
    barrier that every measuring process passes before timing, so their timings overlap."""
    import cv2
    import zarr

    from idtprior.storage.frames import write_frames
    from idtprior.video.io import iter_frames

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="idtprior-plan-decode-") as tmp:
        group = zarr.open_group(tmp, mode="w")

        def store(path: str, name: str = "v") -> None:
            write_frames(group, name, iter_frames(path, short_side=128), 16, 25.0)

        store(paths[min(paths)], "warm-up")
        if start is not None:
            start.wait(timeout=300)
        return {mpix: _best(lambda path=path: store(path), repeats) / frames for mpix, path in sorted(paths.items())}


_DECODE_START = None


def _decode_start(barrier) -> None:
    global _DECODE_START
    _DECODE_START = barrier


def _decode_in_pool(args: tuple) -> dict[float, float]:
    return _decode_seconds(*args, start=_DECODE_START)


def decode_units(paths: dict[float, str], frames: int, repeats: int, processes: int | None = None
                 ) -> dict[str, float]:
    """The decode units (``decode_s_per_frame``, ``decode_s_per_mpix``) with every core decoding a video, as the
    decode stage runs (one worker a core): ``processes`` (default: the cores, at most 32) processes time
    :func:`_decode_seconds` together, and their mean is the unit. One process alone on an idle machine is faster than
    a core of a busy one: the decoder's, Zarr's and the store's helper threads run on the idle cores (on 2 cores:
    about 50 ms a demo video alone, about 75 with both cores decoding)."""
    import multiprocessing

    n = processes or min(os.cpu_count() or 1, 32)
    if n == 1:
        per = [_decode_seconds(paths, frames, repeats)]
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads (Zarr's loop)
        barrier = ctx.Barrier(n)
        with ctx.Pool(n, initializer=_decode_start, initargs=(barrier,)) as pool:
            per = pool.map(_decode_in_pool, [(paths, frames, repeats)] * n, chunksize=1)
    mean = {mpix: float(np.mean([p[mpix] for p in per])) for mpix in paths}
    per_frame, per_mpix = _line(mean)
    return {"decode_s_per_frame": per_frame, "decode_s_per_mpix": per_mpix}


def measure_decode_units(quick: bool = True, processes: int | None = None) -> dict[str, float]:
    """Decode's units alone (``measure_units``'s, on the same generated videos, every core decoding)."""
    import cv2

    from idtprior.datasets.synthetic import textured_pan_video
    from idtprior.video.io import write_video

    n = 24 if quick else 64
    with tempfile.TemporaryDirectory(prefix="idtprior-plan-") as tmp:
        small, large = Path(tmp) / "v160.mp4", Path(tmp) / "v640.mp4"
        write_video(small, textured_pan_video(n, 120, 160))
        write_video(large, [cv2.resize(f, (640, 480)) for f in textured_pan_video(n, 240, 320)])
        return decode_units({160 * 120 / 1e6: str(small), 640 * 480 / 1e6: str(large)}, n, 1 if quick else 4,
                            processes)


def measure_idt_units(quick: bool = True) -> dict[str, float]:
    """IDT's units alone (``measure_units``'s, on the same generated videos), one thread: for a new extractor."""
    import cv2

    from idtprior.datasets.synthetic import textured_pan_video

    cv2.setNumThreads(1)
    n, repeats = (24, 1) if quick else (64, 3)
    out: dict[str, Any] = {}
    _idt_units(out, {(h, w): textured_pan_video(n, h, w) for h, w in ((120, 160), (240, 320))}, repeats)
    return out


def measure_units(quick: bool = True) -> Units:
    """Per-unit seconds on this machine, one thread, on generated videos (quick: under a minute on 2 cores)."""
    import cv2
    import torch
    import zarr
    from threadpoolctl import threadpool_limits

    from idtprior.datasets.synthetic import textured_pan_video
    from idtprior.encoding import CodebookParams, count_sketch, fisher_vector
    from idtprior.encoding.codebook import fit_codebook, fit_codebook_with_report
    from idtprior.encoding.gmm import DiagGMM, em_step
    from idtprior.models.data import ClipDataset, FunctionClipSource
    from idtprior.models.resnet3d import resnet3d
    from idtprior.storage.frames import write_frames
    from idtprior.video.framecodec import JpegFrames
    from idtprior.video.io import iter_frames, probe_video, write_video

    threads = (cv2.getNumThreads(), torch.get_num_threads())
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    blas = threadpool_limits(limits=1)  # per-core units: BLAS on one thread too
    rng = np.random.default_rng(0)
    n = 24 if quick else 64
    repeats = 1 if quick else 3
    out: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="idtprior-plan-") as tmp:
            sizes = {}
            for h, w in ((120, 160), (240, 320)):
                frames = textured_pan_video(n, h, w)
                path = Path(tmp) / f"v{w}.mp4"
                write_video(path, frames)
                sizes[(h, w)] = (path, frames)
            # ingest: probing one file
            small = sizes[(120, 160)][0]
            out["probe_s_per_video"] = _best(lambda: [probe_video(small) for _ in range(10)], repeats) / 10
            # decode: decode + resize to short side 128 + zstd store, at two source sizes (160x120 and 640x480)
            large = Path(tmp) / "v640.mp4"
            write_video(large, [cv2.resize(f, (640, 480)) for f in sizes[(240, 320)][1]])
            out.update(decode_units({160 * 120 / 1e6: str(small), 640 * 480 / 1e6: str(large)}, n, repeats + 1))
            group = zarr.open_group(str(Path(tmp) / "frames.zarr"), mode="w")
            write_frames(group, "v640", iter_frames(large, short_side=128), 16, 25.0)
            stored = sum(f.stat().st_size for f in (Path(tmp) / "frames.zarr" / "v640").rglob("*") if f.is_file())
            out["frame_bytes_ratio"] = stored / math.prod(group["v640"].shape)  # uint8: one byte a value
            jpeg = zarr.open_group(str(Path(tmp) / "jpeg.zarr"), mode="w")
            write_frames(jpeg, "v640", iter(group["v640"][:]), 16, 25.0, serializer=JpegFrames(JPEG_UNIT_QUALITY))
            stored = sum(f.stat().st_size for f in (Path(tmp) / "jpeg.zarr" / "v640").rglob("*") if f.is_file())
            out["frame_bytes_ratio_jpeg"] = stored / math.prod(group["v640"].shape)
            # IDT on the frames (no file decode: that is decode's unit), at two sizes
            rows = _idt_units(out, {hw: frames for hw, (_, frames) in sizes.items()}, repeats)
            descriptors = np.concatenate([rows[max(rows)][:, 10:]] * 4)  # the 320x240 video's
            # Fisher vector + sketch per row and component, each PCA mode (K=16, a quick fit)
            out["fisher_s_per_row_component"] = {}
            for mode in ("concat", "per_type"):
                book = fit_codebook(descriptors, CodebookParams(n_components=16, pca_mode=mode, gmm_iters=2))
                t = _best(lambda book=book: count_sketch(fisher_vector(descriptors, book)[0], book), repeats + 1)
                out["fisher_s_per_row_component"][mode] = t / (len(descriptors) * 16)
            # how far EM goes before it stops on its tolerance (a fraction of gmm_iters)
            _, reports = fit_codebook_with_report(descriptors, CodebookParams(n_components=16, pca_mode="per_type",
                                                                              gmm_iters=100))
            out["em_iters_fraction"] = float(np.mean([len(r.log_likelihood) for r in reports])) / 100
            # one EM iteration and one k-means iteration, per product of their sizes
            k, d = 32, 64
            x = rng.standard_normal((20_000 if quick else 50_000, d)).astype(np.float32)
            gmm = DiagGMM(np.full(k, 1 / k, np.float32), x[:k].copy(), np.ones((k, d), np.float32))
            var = x.var(0)
            t = _best(lambda: em_step(x, gmm, 1e-4 * var, var), repeats + 1)
            out["em_s_per_row_component_dim"] = t / (len(x) * k * d)
            out.update(kmeans_units(rng, repeats + 2))
            # training step and forward pass on the CPU, per GMAC (a reference network: width 0.25, 8x64x64)
            gmac, _ = network_cost("resnet18", 0.25, 128, 8, 64)
            net = resnet3d("resnet18", 128, 0.25)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            clips = torch.randn(8, 3, 8, 64, 64)

            def step() -> None:
                loss = net(clips).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

            step()
            out["train_s_per_gmac"] = _best(step, repeats + 1) / (8 * gmac)
            net.eval()
            with torch.no_grad():
                out["embed_s_per_gmac"] = _best(lambda: net(clips), repeats + 1) / (8 * gmac)
            # the loader: a clip read from the frame store and transformed (16 frames of 128x171, crop 112)
            arr = group["v640"]
            source = FunctionClipSource(lambda i, s, m: arr[s : s + m], lambda i: arr.shape[0], 1)
            ds = ClipDataset(source, clip_length=16, crop_size=112, seed=0)
            read_mpix = 16 * arr.shape[1] * arr.shape[2] / 1e6
            t = _best(lambda: [ds[(0, e)] for e in range(8)], repeats) / 8
            out["loader_s_per_mpix"] = t / read_mpix
            raw = ClipDataset(source, clip_length=16, crop_size=112, seed=0, raw=True)
            out["loader_raw_s_per_mpix"] = _best(lambda: [raw[(0, e)] for e in range(8)], repeats) / 8 / read_mpix
            out["epoch_overhead_s"], out["train_setup_s"] = _training_overheads(Path(tmp))
            out["detect_s_per_frame"] = _detect_seconds(sizes[(240, 320)][1][:4 if quick else 16])
    finally:  # threadpoolctl's restore first: it sets OpenMP (torch's pool) back to what it was at its start, 1
        blas.restore_original_limits()
        cv2.setNumThreads(threads[0])
        torch.set_num_threads(threads[1])
    return Units(machine=machine_name(), measured=str(date.today()), how=f"measure_units(quick={quick})", **out)


def kmeans_units(rng: np.random.Generator, repeats: int = 3) -> dict[str, float]:
    """kmeans_seconds' units, one thread: a Lloyd iteration's time (21 iterations less 1, over 20) at K=2 and K=128
    on 8000 x 256 gives its per-distance part, at K=2 on 1000 x 1000 its per-value part, on 64 x 8 its fixed part;
    k-means++ against random seeding at K=33 on 256 x 16, a step's fixed part, and at K=17 on 1024 x 1024 (four
    candidates a step), its part per candidate distance term (more candidates on more rows take less a term:
    benchmarks/plan_units.py --kmeans plans K=200-1000 seedings at 1.3-1.6x)."""
    from idtprior.encoding import kmeans

    def iteration(x: np.ndarray, k: int) -> float:
        one = _best(lambda: kmeans(x, k, runs=1, iters=1, init="random"), repeats)
        return max(_best(lambda: kmeans(x, k, runs=1, iters=21, init="random"), repeats) - one, 1e-9) / 20

    big = rng.standard_normal((8000, 256)).astype(np.float32)
    tiny = rng.standard_normal((64, 8)).astype(np.float32)
    fixed = iteration(tiny, 4)
    per_distance = max(iteration(big, 128) - iteration(big, 2), 1e-12) / (big.size * 126)
    # the per-value part grows with the block: 0.4-0.5 ns a value on 240 x 2000 (1.9 MB), 1.2-1.7 on 8000 x 256,
    # 1.9 on 20000 x 256 (one thread, here); measured on a block of 4 MB, between. Where blocks are larger, K is
    # (Kinetics: 6000) and the distances are most of an iteration
    mid = rng.standard_normal((1000, 1000)).astype(np.float32)
    per_value = max(iteration(mid, 2) - fixed - 2 * mid.size * per_distance, 0.0) / mid.size

    def seed_step(x: np.ndarray, k: int) -> float:
        kpp = _best(lambda: kmeans(x, k, runs=1, iters=0, init="k-means++"), repeats)
        return max(kpp - _best(lambda: kmeans(x, k, runs=1, iters=0, init="random"), repeats), 0.0) / (k - 1)

    step = seed_step(rng.standard_normal((256, 16)).astype(np.float32), 33)
    wide = rng.standard_normal((1024, 1024)).astype(np.float32)  # 4 candidates a step (2 + int(ln 17))
    per_seed = max(seed_step(wide, 17) - step, 0.0) / (4 * wide.size)
    return {"kmeans_s_per_row_centroid_dim": per_distance, "kmeans_s_per_row_dim": per_value,
            "kmeans_s_per_iteration": fixed, "kmeans_s_per_seed_step": step, "kmeans_s_per_seed_distance": per_seed}


def _training_overheads(tmp: Path) -> tuple[float, float]:
    """(seconds an epoch costs beyond its clips, a run's fixed seconds) of ``train`` on the CPU: runs of 1 and 3
    epochs over 8 tiny videos (4x32x32 clips of a width-1/8 network: their compute is a small part, subtracted)."""
    from idtprior.models import ArrayClipSource, PretrainParams, moving_squares, train

    videos, labels = moving_squares(8, frames=8, size=40, seed=0)
    source = ArrayClipSource(videos)
    params = dict(width=0.125, embed_dim=16, clip_length=4, crop_size=32, batch_size=4, negatives=8, la_k=8,
                  num_workers=0, accelerator="cpu", progress_bar=False, log_every_n_steps=1, milestones=())
    seconds = {}
    quiet = logging.getLogger("pytorch_lightning"), logging.getLogger("lightning.pytorch")
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for epochs in (1, 3):
                t0 = time.perf_counter()
                train(PretrainParams(epochs=epochs, **params), source, out_dir=tmp / f"train{epochs}",
                      labels_for_eval=labels)
                seconds[epochs] = time.perf_counter() - t0
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    per_epoch = (seconds[3] - seconds[1]) / 2
    return per_epoch, max(0.0, seconds[1] - per_epoch)


def _detect_seconds(frames: list[np.ndarray]) -> float:
    """Seconds per 320x240 frame of the embedded ssdlite detector (nan where it cannot be built here)."""
    try:
        from idtprior.video.detect import DetectParams, detect

        params = DetectParams(backend="ssdlite", batch_size=len(frames))
        batch = np.stack(frames)
        detect(batch, params)  # loads the network once
        return _best(lambda: detect(batch, params), 2) / len(frames)
    except Exception:  # noqa: BLE001 - the plan then says detect's cost is unknown
        return float("nan")
