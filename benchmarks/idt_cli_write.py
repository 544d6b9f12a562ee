"""`idtprior idt VIDEO -o OUT.txt.gz` end to end, as a user times it: wall seconds and peak RSS of the whole command,
each run in a fresh process, against a baseline measured in the same run: the CLI's previous output path (every block
of rows kept, concatenated, formatted as one string and gzipped at Python's default level 9), on the same video with
the same extractor. Videos: the KTH clip (160x120, from ../shared/data) and the generated 320x240 video of
benchmarks/idt_speed.py (written losslessly with ffv1). One OpenCV thread, as the release.

Usage: python benchmarks/idt_cli_write.py [N_FRAMES]   (default 150)"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the previous CLI's write path, run in a child process (the extractor is the same in both)
BASELINE = r"""
import sys, gzip, numpy as np, cv2
cv2.setNumThreads(1)
from idtprior.video.idt import IDTParams
from idtprior.video.idt.extract import iter_idt
from idtprior.video.idt.textformat import format_idt_rows
from idtprior.video.io import iter_frames, probe_video
video, out = sys.argv[1], sys.argv[2]
p = IDTParams()
rows = [b for b in iter_idt(iter_frames(video), p, None, num_frames=probe_video(video).frame_count or None)]
rows = np.concatenate(rows)
with gzip.open(out, "wt", encoding="ascii", newline="") as f:
    f.write(format_idt_rows(rows, 10 + 2 * p.track_length))
"""


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``cmd`` run to completion; the peak is read by a wrapper process whose only
    child is ``cmd``, so earlier runs do not count."""
    wrapper = [sys.executable, "-c",
               "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)", *cmd]
    t0 = time.perf_counter()
    out = subprocess.run(wrapper, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, int(out.split()[-1]) / 1024


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from idt_speed import generated_video

    from idtprior.video.io import iter_frames, write_video

    data = Path(os.environ.get("IDTPRIOR_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    tmp = Path(tempfile.mkdtemp(prefix="idt-cli-"))
    videos = []
    kth = data / "kth" / "person01_boxing_d1_uncomp.avi"
    if kth.exists():
        write_video(tmp / "kth.avi", [f for _, f in zip(range(n), iter_frames(kth))], codec="ffv1")
        videos.append(("KTH 160x120", tmp / "kth.avi"))
    else:
        print(f"KTH clip not found under {kth.parent}: only the generated video")
    write_video(tmp / "generated.avi", generated_video(n), codec="ffv1")
    videos.append(("generated 320x240", tmp / "generated.avi"))
    cli = [sys.executable, "-m", "idtprior.video.idt.cli"]
    # the reference release (DenseTrackStab, OpenCV 4 + SURF) measured end to end on this machine kind, one core, quiet
    # machine, median of 3 (not rerun here): frames/s and peak RSS in MB; at 320x240 on a real street video (the
    # generated one holds three times its trajectories, so the ratio there understates ours)
    reference = {"KTH 160x120": (37.7, 107), "generated 320x240": (6.8, 139)}
    for name, video in videos:
        base_s, base_mb = peak_rss([sys.executable, "-c", BASELINE, str(video), str(tmp / "base.txt.gz")])
        print(f"{name}, {n} frames: previous write path (all rows kept, gzip level 9): {base_s:.1f} s, "
              f"{n / base_s:.1f} frames/s, peak RSS {base_mb:.0f} MB, {(tmp / 'base.txt.gz').stat().st_size / 1e6:.1f} MB")
        for level in (6, 1):
            out = tmp / f"l{level}.txt.gz"
            s, mb = peak_rss([*cli, str(video), "-o", str(out), "--gzip-level", str(level)])
            print(f"  idtprior idt --gzip-level {level}{' (default)' if level == 6 else ''}: {s:.1f} s, "
                  f"{n / s:.1f} frames/s, x{base_s / s:.2f} the previous speed; peak RSS {mb:.0f} MB "
                  f"({mb / base_mb:.2f}x); {out.stat().st_size / 1e6:.1f} MB")
            ref_fps, ref_mb = reference[name]
            print(f"    against the reference release: x{n / s / ref_fps:.2f} its {ref_fps} frames/s, "
                  f"{mb / ref_mb:.2f}x its {ref_mb} MB peak RSS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
