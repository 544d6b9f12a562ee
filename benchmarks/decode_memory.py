"""Peak memory of the decode stage's streaming write against holding the decoded video, in the same run.

    python benchmarks/decode_memory.py [--seconds 20] [--width 1920 --height 1080] [--short-side 128]

Generates a synthetic 1080p H.264 video (a scrolling texture; encoding is the slow part: 600 s takes long on a small
machine, 20 s is the default), then
  - baseline: decodes all frames into one array (what a non-streaming decoder holds),
  - ours: streams them into a Zarr array chunked along time (``write_frames``),
and prints the peak Python-heap memory (tracemalloc: numpy buffers are tracked) of each and their ratio, plus the
extrapolation to a 10-minute video.
"""

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from idtprior.storage import Workspace, write_frames
from idtprior.video.io import iter_frames, write_video


def peak_of(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, seconds, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--short-side", type=int, default=128)
    args = ap.parse_args()
    n = int(args.seconds * args.fps)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.mp4"
        rng = np.random.default_rng(0)
        tile = rng.integers(0, 255, (args.height, args.width + n, 3), dtype=np.uint8)
        write_video(path, (tile[:, t:t + args.width] for t in range(n)), fps=args.fps,
                    options={"preset": "ultrafast", "crf": "28"})
        del tile
        base_peak, base_s, frames = peak_of(lambda: np.stack(list(iter_frames(path, short_side=args.short_side))))
        held = frames.nbytes
        del frames
        group = Workspace(Path(tmp) / "ws").new_version("decode", "c")[1]
        ours_peak, ours_s, (count, h, w) = peak_of(
            lambda: write_frames(group, "long", iter_frames(path, short_side=args.short_side), time_chunk=16,
                                 fps=args.fps))
    print(f"video: {n} frames {args.width}x{args.height} -> {count} frames {w}x{h} (short side {args.short_side})")
    print(f"baseline (hold all decoded frames): peak {base_peak / 2**20:8.1f} MiB  ({held / 2**20:.1f} MiB of frames)"
          f"  {n / base_s:6.1f} frames/s")
    print(f"ours (stream into Zarr, 16-frame chunks): peak {ours_peak / 2**20:8.1f} MiB  {n / ours_s:6.1f} frames/s")
    print(f"ratio ours/baseline peak memory: {ours_peak / base_peak:.3f}")
    ten_min = 600 * args.fps * h * w * 3
    print(f"10-minute video at this size: baseline would hold {ten_min / 2**20:.0f} MiB; ours stays at "
          f"~{ours_peak / 2**20:.1f} MiB (independent of length)")


if __name__ == "__main__":
    main()
