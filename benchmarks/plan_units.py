"""Per-unit costs for ``idtprior plan``, measured on this machine (one thread, generated videos; a few minutes at full
size) and written to ``idtprior/plan_units.json`` with the machine's name. The orchestration's overheads come from
``benchmarks/pipeline_overhead.py --write-units`` and the GPU's training rate from ``benchmarks/train_throughput.py
--paper`` on a GPU; both are kept as they are in the file.

    python benchmarks/plan_units.py            # measure and print; --write to store
    python benchmarks/plan_units.py --idt      # IDT's units alone (after a change of the extractor), the rest kept
    python benchmarks/plan_units.py --decode   # decode's units alone (every core decoding), the rest kept
    python benchmarks/plan_units.py --kmeans   # k-means' units alone, and the plan against kmeans at a few sizes
"""

import argparse
import json
import os
import tempfile
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

from idtprior.units import UNITS_PATH, Units, kmeans_units, measure_decode_units, measure_idt_units, measure_units


def kth_frame_ratio(serializer=None) -> float | None:
    """Stored / raw bytes of the KTH clip's frames at short side 128 (None without ../shared/data); ``serializer``:
    the frames' codec (None: zstd)."""
    import zarr

    from idtprior.storage.frames import write_frames
    from idtprior.video.io import iter_frames

    data = Path(os.environ.get("IDTPRIOR_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    clip = data / "kth" / "person01_boxing_d1_uncomp.avi"
    if not clip.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        n, h, w = write_frames(zarr.open_group(tmp, mode="w"), "kth", iter_frames(clip, short_side=128), 16, 25.0,
                               serializer=serializer)
        stored = sum(f.stat().st_size for f in (Path(tmp) / "kth").rglob("*") if f.is_file())
    return stored / (n * h * w * 3)


# seconds a frame of IDT on the units' generated videos (64 frames at 160x120 and 320x240, one thread), best of 3, for
# the code tree on sys.path[0]
_SECONDS_A_FRAME = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import cv2
cv2.setNumThreads(1)
from idtprior.datasets.synthetic import textured_pan_video
from idtprior.video.idt import IDTParams, extract_idt
out = {}
for h, w in ((120, 160), (240, 320)):
    frames = textured_pan_video(64, h, w)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        extract_idt(iter(frames), IDTParams())
        best = min(best, time.perf_counter() - t0)
    out[h * w / 1e6] = best / len(frames)
print(json.dumps(out))
"""


def idt_units_against(baseline: Path, units: Units, runs: int) -> dict[str, float]:
    """The stored IDT units scaled, size by size, by this tree's speed-up over ``baseline`` (a checkout of the code
    the stored units were measured with): both timed in this run, interleaved, ``runs`` times, the minimum taken."""
    import subprocess
    import sys

    from idtprior.units import _line

    here = Path(__file__).resolve().parents[1]
    best: dict[str, dict[float, float]] = {"baseline": {}, "this": {}}
    for _ in range(runs):
        for name, tree in (("baseline", baseline), ("this", here)):
            out = subprocess.run([sys.executable, "-c", _SECONDS_A_FRAME, str(tree)], check=True, capture_output=True,
                                 text=True, cwd=tempfile.gettempdir(), env={**os.environ, "PYTHONPATH": str(tree)})
            for mpix, s in json.loads(out.stdout.strip().splitlines()[-1]).items():
                best[name][float(mpix)] = min(best[name].get(float(mpix), float("inf")), s)
    stored = {}
    for mpix in sorted(best["this"]):
        ratio = best["baseline"][mpix] / best["this"][mpix]
        old = units.idt_s_per_frame + units.idt_s_per_mpix * mpix
        stored[mpix] = old / ratio
        print(f"{mpix * 1e6:.0f} px frames: {1e3 * best['baseline'][mpix]:.1f} ms a frame before, "
              f"{1e3 * best['this'][mpix]:.1f} now, x{ratio:.2f} (min of {runs} runs); the stored unit's "
              f"{1e3 * old:.1f} ms becomes {1e3 * stored[mpix]:.1f}")
    per_frame, per_mpix = _line(stored)
    return {"idt_s_per_frame": per_frame, "idt_s_per_mpix": per_mpix}


KMEANS_CHECK = ((240, 2000, 12, 20, 30), (240, 128, 12, 20, 3), (960, 2000, 48, 20, 2), (5000, 512, 200, 10, 1),
                (20_000, 128, 1000, 5, 1))
"""(rows, dims, K, iterations, runs) of the model's check: the demo's clustering (30 restarts) and LA's on its bank,
larger ones, up to where k-means++ still seeds."""


def check_kmeans(units: Units) -> None:
    """Print plan.kmeans_seconds against encoding.kmeans timed on one thread (best of 3), at KMEANS_CHECK's sizes."""
    import time

    import numpy as np

    from idtprior.encoding import kmeans
    from idtprior.plan import kmeans_seconds

    rng = np.random.default_rng(1)
    for n, d, k, iters, calls in KMEANS_CHECK:
        x = rng.standard_normal((n, d)).astype(np.float32)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            kmeans(x, k, runs=1, iters=iters, n_init=calls)
            best = min(best, time.perf_counter() - t0)
        planned = sum(kmeans_seconds(units, n, k, d, iters, calls))
        print(f"k-means {n} x {d}, K={k}, {iters} iterations x {calls}: planned {planned:.3f} s, measured "
              f"{best:.3f} s, planned / measured {planned / best:.2f}")


def store(units: Units, new: dict[str, float], lines: dict[str, str], how: str, write: bool) -> int:
    """Print each re-measured unit (``lines``), set it in the stored ``units``, note ``how`` (``{today}``: the date)
    and, with ``write``, save them."""
    for key, value in new.items():
        print(f"{key}: {lines[key]}")
        setattr(units, key, value)
    units.how += "; " + how.format(today=date.today())
    if write:
        units.save()
        print(f"written to {UNITS_PATH}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the calibration's sizes (under a minute)")
    ap.add_argument("--write", action="store_true", help=f"store them in {UNITS_PATH}")
    ap.add_argument("--idt", action="store_true", help="measure IDT's units only and keep the stored others")
    ap.add_argument("--baseline-tree", default=None,
                    help="with --idt: a checkout of the extractor the stored units were measured with; the stored "
                         "units are scaled by this tree's speed-up over it, both timed in this run (the machine's "
                         "speed moves from day to day; a ratio of one run does not)")
    ap.add_argument("--runs", type=int, default=5, help="with --baseline-tree: interleaved runs of each tree")
    ap.add_argument("--decode", action="store_true",
                    help="measure decode's units only (every core decoding a video) and keep the stored others")
    ap.add_argument("--kmeans", action="store_true",
                    help="measure k-means' units only (a Lloyd iteration's parts, a k-means++ step's) and keep the "
                         "others")
    args = ap.parse_args()
    if args.kmeans:
        import numpy as np
        from threadpoolctl import threadpool_limits

        units = Units.load()
        with threadpool_limits(limits=1):
            new = kmeans_units(np.random.default_rng(0), 3 if args.quick else 7)
            check_kmeans(replace(units, **new))
        return store(units, new, {k: f"{v:.4g} (stored {getattr(units, k):.4g})" for k, v in new.items()},
                     "k-means' units on {today} (benchmarks/plan_units.py --kmeans)", args.write)
    if args.decode:
        units = Units.load()
        alone = measure_decode_units(quick=args.quick, processes=1)
        new = measure_decode_units(quick=args.quick)
        lines = {k: f"{v:.4g} with every core decoding, {alone[k]:.4g} with one process alone (x{v / alone[k]:.2f}; "
                    f"stored {getattr(units, k):.4g}, x{v / getattr(units, k):.2f})" for k, v in new.items()}
        return store(units, new, lines, "decode's units with every core decoding on {today} "
                     "(benchmarks/plan_units.py --decode)", args.write)
    if args.idt:
        units = Units.load()
        if args.baseline_tree:
            new = idt_units_against(Path(args.baseline_tree), units, args.runs)
        else:
            new = measure_idt_units(quick=args.quick)
        how = (f"scaled by the extractor's speed-up over {args.baseline_tree} measured in one run"
               if args.baseline_tree else "re-measured")
        return store(units, new, {k: f"{v:.4g} (stored {getattr(units, k):.4g}, x{v / getattr(units, k):.2f})"
                                  for k, v in new.items()},
                     f"IDT's units {how} on {{today}} (benchmarks/plan_units.py --idt)", args.write)
    units = measure_units(quick=args.quick)
    units.how = "benchmarks/plan_units.py" + (" --quick" if args.quick else "")
    ratio = kth_frame_ratio()
    if ratio is not None:  # real video compresses less than the generated texture: the stored frames' size from it
        print(f"frame_bytes_ratio: {ratio:.3f} on the KTH clip (real video), {units.frame_bytes_ratio:.3f} generated")
        units.frame_bytes_ratio = ratio
        from idtprior.units import JPEG_UNIT_QUALITY
        from idtprior.video.framecodec import JpegFrames

        jpeg = kth_frame_ratio(JpegFrames(JPEG_UNIT_QUALITY))
        print(f"frame_bytes_ratio_jpeg: {jpeg:.3f} on the KTH clip, {units.frame_bytes_ratio_jpeg:.3f} generated")
        units.frame_bytes_ratio_jpeg = jpeg
        units.how += " (frame_bytes_ratio and _jpeg from the KTH clip)"
    if UNITS_PATH.exists():
        old = json.loads(UNITS_PATH.read_text())  # a plain dict: an older file may lack a newer unit
        units.stage_overhead_s, units.video_overhead_s = old["stage_overhead_s"], old["video_overhead_s"]
        units.gpu = old["gpu"]
        for key, value in asdict(units).items():
            before = old.get(key)
            if isinstance(value, float) and isinstance(before, float) and before:
                print(f"{key}: {value:.4g} (stored {before:.4g}, x{value / before:.2f})")
    print(json.dumps(asdict(units), indent=1))
    if args.write:
        units.save()
        print(f"written to {UNITS_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
