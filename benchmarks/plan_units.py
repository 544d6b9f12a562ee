"""Per-unit costs for ``idtprior plan``, measured on this machine (one thread, generated videos; a few minutes at full
size) and written to ``idtprior/plan_units.json`` with the machine's name. The orchestration's overheads come from
``benchmarks/pipeline_overhead.py --write-units`` and the GPU's training rate from ``benchmarks/train_throughput.py
--paper`` on a GPU; both are kept as they are in the file.

    python benchmarks/plan_units.py            # measure and print; --write to store
"""

import argparse
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from idtprior.plan import UNITS_PATH, measure_units


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the calibration's sizes (under a minute)")
    ap.add_argument("--write", action="store_true", help=f"store them in {UNITS_PATH}")
    args = ap.parse_args()
    units = measure_units(quick=args.quick)
    units.how = "benchmarks/plan_units.py" + (" --quick" if args.quick else "")
    ratio = kth_frame_ratio()
    if ratio is not None:  # real video compresses less than the generated texture: the stored frames' size from it
        print(f"frame_bytes_ratio: {ratio:.3f} on the KTH clip (real video), {units.frame_bytes_ratio:.3f} generated")
        units.frame_bytes_ratio = ratio
        from idtprior.plan import JPEG_UNIT_QUALITY
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
