"""The decoded frames' codecs: bytes per frame and random clip reads, zstd (lossless, the default) against per-frame
JPEG (``decode.codec: jpeg``), in one run, on the KTH clip (real video, ../shared/data) and a generated camera pan,
both at the decode stage's short side 128.

Prints, per codec: bytes per frame and the ratio to raw and to zstd; the image quality (PSNR against the decoded
video's frames); the time of a random 16-frame clip read from the store (one thread, best of 3 passes over the same
seeded clips) and its ratio to zstd's; and that time as a share of a loader worker's budget at the paper's training
rate (about 1,000 clips/s on an H100 fed by 14 workers: 14 ms a clip per worker).

    python benchmarks/frame_codec.py [--clips 200]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import zarr

from idtprior.datasets.synthetic import textured_pan_video
from idtprior.storage.frames import write_frames
from idtprior.video.framecodec import JpegFrames
from idtprior.video.io import iter_frames, resized_shape

WORKER_BUDGET_S = 14 / 1000.0  # 14 loader workers feeding ~1,000 clips/s


def sources() -> dict[str, np.ndarray]:
    out = {}
    data = Path(os.environ.get("IDTPRIOR_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    kth = data / "kth" / "person01_boxing_d1_uncomp.avi"
    if kth.exists():
        out["KTH clip (real, 360 frames)"] = np.stack(list(iter_frames(kth, short_side=128)))
    else:
        print(f"(no KTH clip under {data}: the generated video only)")
    h, w = resized_shape(240, 320, 128, None)
    out["generated pan (240 frames)"] = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)
                                                  for f in textured_pan_video(240, 240, 320)])
    return out


def stored_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in (folder / "c").rglob("*") if f.is_file())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def read_time(arr, starts: np.ndarray, length: int = 16) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for s in starts:
            arr[int(s):int(s) + length]
        best = min(best, (time.perf_counter() - t0) / len(starts))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=200, help="random clips read per codec")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    codecs = {"zstd": None, "jpeg q95": JpegFrames(95), "jpeg q90": JpegFrames(90), "jpeg q75": JpegFrames(75)}
    for name, frames in sources().items():
        n, h, w, _ = frames.shape
        print(f"\n{name}: {n} frames of {w}x{h}, raw {h * w * 3} bytes a frame")
        print("| codec | bytes/frame | of raw | x smaller than zstd | PSNR dB | 16-frame clip read ms | x zstd's time "
              "| of a worker's budget |")
        print("|---|---|---|---|---|---|---|---|")
        starts = np.random.default_rng(0).integers(0, n - 16, args.clips)
        base = {}
        with tempfile.TemporaryDirectory() as tmp:
            for codec, serializer in codecs.items():
                group = zarr.open_group(str(Path(tmp) / codec.replace(" ", "_")), mode="w")
                write_frames(group, "v", iter(frames), time_chunk=16, fps=25.0, serializer=serializer)
                size = stored_bytes(Path(tmp) / codec.replace(" ", "_") / "v") / n
                arr = zarr.open_group(str(Path(tmp) / codec.replace(" ", "_")), mode="r")["v"]
                quality = psnr(arr[:], frames)
                t = read_time(arr, starts)
                base = base or {"size": size, "time": t}
                print(f"| {codec} | {size:,.0f} | {size / (h * w * 3):.3f} | {base['size'] / size:.2f} | {quality:.1f} "
                      f"| {t * 1e3:.2f} | {t / base['time']:.2f} | {t / WORKER_BUDGET_S:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
