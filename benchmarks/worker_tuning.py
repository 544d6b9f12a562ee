"""IDT on a Dask worker with and without ``tune_worker_process`` (heap for frame-sized arrays, one native thread),
against the same videos in this plain process: seconds per video and the system time's share, in one run.

Each side gets a fresh LocalCluster of one single-threaded worker process (the nanny starts it with Dask's
``MALLOC_TRIM_THRESHOLD_``, as the pipeline's workers); the videos are generated (``textured_pan_video``) on the worker
before the clock starts, so only IDT is timed.

    python benchmarks/worker_tuning.py [--videos 8] [--frames 64]
"""

import argparse
import os
import time

import numpy as np


def idt_seconds(seed: int, frames: int, tune: bool) -> tuple[float, float]:
    """(wall seconds, system seconds) of IDT on one generated 160x120 video, in the calling process."""
    from idtprior.datasets.synthetic import textured_pan_video
    from idtprior.runtime.worker import tune_worker_process
    from idtprior.video.idt import IDTParams, extract_idt

    if tune:
        tune_worker_process(1)
    video = textured_pan_video(frames, 120, 160, seed)
    sys0, t0 = os.times().system, time.perf_counter()
    extract_idt(iter(video), IDTParams())
    return time.perf_counter() - t0, os.times().system - sys0


def on_worker(n: int, frames: int, tune: bool) -> np.ndarray:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        client.submit(idt_seconds, 0, 8, tune, pure=False).result()  # imports and first-call costs
        return np.array([client.submit(idt_seconds, s, frames, tune, pure=False).result() for s in range(n)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=64)
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(1)
    idt_seconds(0, 8, False)
    plain = np.array([idt_seconds(s, args.frames, False) for s in range(args.videos)])
    untuned = on_worker(args.videos, args.frames, tune=False)
    tuned = on_worker(args.videos, args.frames, tune=True)
    for name, r in (("plain process, one OpenCV thread", plain), ("Dask worker, as Dask starts it", untuned),
                    ("Dask worker, tune_worker_process", tuned)):
        wall, sys_ = np.median(r[:, 0]), np.median(r[:, 1])
        print(f"{name}: {wall:.3f} s a video ({args.frames} frames, 160x120), system time {sys_ / wall:.0%}")
    print(f"untuned worker / plain process = {np.median(untuned[:, 0]) / np.median(plain[:, 0]):.2f}; "
          f"tuned worker / plain process = {np.median(tuned[:, 0]) / np.median(plain[:, 0]):.2f}; "
          f"untuned / tuned = {np.median(untuned[:, 0]) / np.median(tuned[:, 0]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
