"""The torch IDT backend's speed (issue 16): frames/s per device, batched over videos, at 160x120 and 320x240, with the
device's peak memory, against the CPU extractor on every core of the host in the same run (one process per core, one
OpenCV thread each), and the fraction of the CPU extractor's trajectories the torch rows match (video 0).

Imports only torch, cv2, numpy and idtprior's core (no av, zarr or prefect): the lent GPU machine has none of them.
Generated videos (``textured_pan_video``: a pan over texture with two moving objects). ``--homography device`` runs
the batched RANSAC on the device, ``cpu`` OpenCV's per video; both by default.

    python benchmarks/idt_gpu_speed.py                       # on a GPU machine: the issue's figure
    python benchmarks/idt_gpu_speed.py --device cpu --videos 2 --frames 24 --sizes 160x120   # a smoke run anywhere
"""

import argparse
import multiprocessing as mp
import os
import time

import cv2
import torch

from idtprior.datasets.synthetic import textured_pan_video
from idtprior.video.idt import IDTParams, extract_idt
from idtprior.video.idt.compare import fidelity_report
from idtprior.video.idt.torch_extract import extract_idt_batch


def _cpu_one(frames) -> int:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    return len(extract_idt(frames, IDTParams()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    ap.add_argument("--videos", type=int, default=32, help="videos per batch (and for the CPU baseline)")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--sizes", default="160x120,320x240")
    ap.add_argument("--homography", default="device,cpu")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"device {dev} ({name}); host {args.cores} cores; {args.videos} videos x {args.frames} frames per size")
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        videos = [textured_pan_video(args.frames, h, w, seed=i) for i in range(args.videos)]
        total = args.videos * args.frames
        t0 = time.perf_counter()
        with mp.get_context("fork").Pool(args.cores) as pool:
            counts = pool.map(_cpu_one, videos)
        cpu_s = time.perf_counter() - t0
        cpu_fps = total / cpu_s
        print(f"{size}: CPU extractor on {args.cores} cores {cpu_fps:.1f} frames/s ({cpu_fps / args.cores:.1f} per "
              f"core), {sum(counts)} trajectories")
        ref0 = extract_idt(videos[0], IDTParams())
        for mode in args.homography.split(","):
            extract_idt_batch(videos[:1], IDTParams(), device=dev, homography=mode)  # warm-up: kernels, allocator
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            rows = extract_idt_batch(videos, IDTParams(), device=dev, homography=mode)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            s = time.perf_counter() - t0
            mem = f", peak {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB" if dev.type == "cuda" else ""
            rep = fidelity_report(rows[0], ref0)
            print(f"{size}: torch on {dev}, homography {mode}: {total / s:.1f} frames/s{mem}; "
                  f"x{(total / s) / cpu_fps:.2f} the CPU extractor on {args.cores} cores, "
                  f"x{(total / s) / (cpu_fps / args.cores):.1f} one core; video 0 matched {rep['matched']:.3f}, "
                  f"count ratio {rep['count_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
