"""IDT speed: frames/s with one OpenCV thread (per core) and with all cores, on the KTH clip (160x120) and a generated
320x240 video; every core running one video at once (frames/s per core); seconds per part; peak traced memory per
video. Ratios against baselines measured in the same run:
Farneback flow alone on the same frames (one scale, one pass; machine-independent), and the reference release's speed
as measured on this machine kind (DenseTrackStab against OpenCV 4 with SURF, one core, quiet machine, median of 3:
37.7 frames/s on the KTH clip at 160x120, 6.8 frames/s on a 320x240 street video; not rerun here). Usage: python benchmarks/idt_speed.py [N_FRAMES]"""

import os
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np

from idtprior.video.idt import PARTS, IDTParams, extract_idt
from idtprior.video.idt.extract import farneback
from idtprior.datasets.synthetic import textured_pan_video as generated_video
from idtprior.video.io import iter_frames

REFERENCE_FPS = {(120, 160): 37.7, (240, 320): 6.8}


def bench(name: str, frames: list[np.ndarray], threads: int) -> float:
    cv2.setNumThreads(threads)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    p = IDTParams()
    t0 = time.perf_counter()
    for a, b in zip(gray[:-1], gray[1:]):
        farneback(a, b, p)
    flow_only = (time.perf_counter() - t0) / len(frames)
    tm: dict[str, float] = {}
    t0 = time.perf_counter()
    rows = extract_idt(iter(frames), p, timings=tm)
    dt = time.perf_counter() - t0
    # memory in a second pass: tracemalloc slows numpy allocations too much to time under it
    tracemalloc.start()
    extract_idt(iter(frames[:40]), p)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    fps = len(frames) / dt
    ref = REFERENCE_FPS.get(frames[0].shape[:2])
    parts = " ".join(f"{k} {1e3 * tm[k] / len(frames):.1f}" for k in PARTS)
    print(f"{name} threads={threads}: {fps:.1f} frames/s ({len(rows)} trajectories, {len(frames)} frames); "
          f"x{fps / ref:.2f} of the reference's {ref} fps; " if ref else "", end="")
    print(f"{dt / len(frames) / flow_only:.1f}x the time of one-scale Farneback alone; peak traced memory "
          f"{peak / 2**20:.1f} MiB (40 frames)\n  ms/frame per part: {parts}")
    return fps


def _one_core(frames: list[np.ndarray]) -> float:
    """Seconds for one extraction with one OpenCV thread (a worker process's share of the all-cores run)."""
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    extract_idt(iter(frames), IDTParams())
    return time.perf_counter() - t0


def all_cores(name: str, frames: list[np.ndarray], single_fps: float) -> None:
    """Every core runs one video at once (one process each, one OpenCV thread): frames/s per core against the
    single-core figure of the same run (the stage's setting: no oversubscription)."""
    import multiprocessing as mp

    n = os.cpu_count() or 1
    with mp.get_context("spawn").Pool(n) as pool:  # fork after OpenCV's threads ran can hang a child
        seconds = pool.map(_one_core, [frames] * n)
    per_core = len(frames) / float(np.mean(seconds))
    print(f"{name}, {n} processes x 1 thread: {per_core:.1f} frames/s per core, x{per_core / single_fps:.2f} the "
          f"single-core figure ({n * per_core:.1f} frames/s in all)")


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 120
    data = Path(os.environ.get("IDTPRIOR_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    clip = data / "kth" / "person01_boxing_d1_uncomp.avi"
    videos = []
    if clip.exists():
        videos.append(("KTH 160x120", [f for _, f in zip(range(n), iter_frames(clip))]))
    else:
        print(f"KTH clip not found under {clip.parent}: only the generated video")
    videos.append(("generated 320x240", generated_video(n)))
    for name, frames in videos:
        single = bench(name, frames, 1)
        bench(name, frames, os.cpu_count() or 1)
        all_cores(name, frames, single)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
