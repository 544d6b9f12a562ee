"""`idtprior idt VIDEO -o OUT.txt.gz` end to end, as a user times it: wall seconds and peak RSS of the whole command,
each run in a fresh process, against baselines measured in the same run:

- the CLI's previous output path (every block of rows kept, concatenated, formatted as one string and gzipped at
  Python's default level 9), on the same video with the same extractor;
- one OpenCV Farneback call at the finest scale per frame on the same frames (one thread): the machine-independent
  unit of benchmarks/idt_speed.py. The command's seconds a frame over it say how fast it is whatever the machine's
  mood, and convert the reference release's figure, measured on a quiet machine of this kind, to this run's machine.

Videos: the KTH clip itself (160x120, 360 frames of MPEG-4, from ../shared/data: the input of the release's 37.7
frames/s) and the generated 320x240 video of benchmarks/idt_speed.py (written losslessly with ffv1). One OpenCV
thread, as the release. Every command runs RUNS times, interleaved; the minimum and the median are printed (this
machine kind's timings move by 10-30% from run to run). `taskset -c 0` runs the default command on one core:
decoding, formatting and gzip then share the extraction's core. The command is the `idtprior` console script beside
this Python (`python -m idtprior.cli` without it), with its imports, as a user times it; a further row runs it the way
it ran before it skipped the pipeline's parser and imports.

Usage: python benchmarks/idt_cli_write.py [N_GENERATED_FRAMES (150)] [RUNS (5)]"""

import os
import shutil
import statistics
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

# `idtprior idt` as it ran before it took its own path in idtprior.cli.main: the whole command line's parser (its
# config, pydantic) and main's imports (the list formats, zarr) before the extraction
FULL_PARSER = r"""
import sys
import idtprior.cli as cli
cli._prefect_defaults()
args = cli.build_parser().parse_args(["idt", *sys.argv[1:]])
import idtprior.config, idtprior.datasets.lists
sys.exit(args.func(args))
"""

# The reference release (DenseTrackStab, OpenCV 4 + SURF) measured end to end on this machine kind, one core, quiet
# machine, median of 3 (not rerun here): frames/s and peak RSS in MB; at 320x240 on a real street video (the
# generated one holds three times its trajectories, so the ratio there understates ours).
REFERENCE = {"KTH 160x120": (37.7, 107), "generated 320x240": (6.8, 139)}
# One-scale Farneback took about 4.7 ms a frame of the KTH clip on such a quiet machine (README: the extractor at
# 75.6 frames/s was 2.8x its time); this run's own Farneback time over it scales the release's figure to this run.
QUIET_FARNEBACK_MS = {"KTH 160x120": 4.7}


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``cmd`` run to completion; the peak is read by a wrapper process whose only
    child is ``cmd``, so earlier runs do not count."""
    wrapper = [sys.executable, "-c",
               "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)", *cmd]
    t0 = time.perf_counter()
    out = subprocess.run(wrapper, check=True, capture_output=True, text=True, cwd=tempfile.gettempdir()).stdout
    return time.perf_counter() - t0, int(out.split()[-1]) / 1024


def farneback_ms(video: Path) -> float:
    """Milliseconds a frame of one-scale Farneback (idt_speed's unit) on ``video``'s frames, one thread, best of 3."""
    import cv2

    from idtprior.video.idt import IDTParams
    from idtprior.video.idt.extract import farneback
    from idtprior.video.io import iter_frames

    cv2.setNumThreads(1)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in iter_frames(video)]
    p = IDTParams()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for a, b in zip(gray[:-1], gray[1:]):
            farneback(a, b, p)
        best = min(best, (time.perf_counter() - t0) / len(gray))
    return 1e3 * best


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from idt_speed import generated_video

    from idtprior.video.io import probe_video, write_video

    data = Path(os.environ.get("IDTPRIOR_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    tmp = Path(tempfile.mkdtemp(prefix="idt-cli-"))
    videos = []
    kth = data / "kth" / "person01_boxing_d1_uncomp.avi"
    if kth.exists():
        videos.append(("KTH 160x120", kth))  # the file itself, every frame: the release's input
    else:
        print(f"KTH clip not found under {kth.parent}: only the generated video")
    write_video(tmp / "generated.avi", generated_video(n), codec="ffv1")
    videos.append(("generated 320x240", tmp / "generated.avi"))
    entry = Path(sys.executable).with_name("idtprior")  # the console script a user runs
    cli = [str(entry), "idt"] if entry.exists() else [sys.executable, "-m", "idtprior.cli", "idt"]
    one_core = ["taskset", "-c", "0"] if shutil.which("taskset") else None
    for name, video in videos:
        frames = probe_video(video).frame_count
        commands = {"previous write path (all rows kept, gzip level 9)":
                    [sys.executable, "-c", BASELINE, str(video), str(tmp / "base.txt.gz")]}
        commands["idtprior idt through the pipeline's parser and imports (before the command's own path)"] = [
            sys.executable, "-c", FULL_PARSER, str(video), "-o", str(tmp / "full.txt.gz")]
        for level in (6, 1):
            commands[f"idtprior idt --gzip-level {level}{' (default)' if level == 6 else ''}"] = [
                *cli, str(video), "-o", str(tmp / f"l{level}.txt.gz"), "--gzip-level", str(level)]
        if one_core:
            commands["the default on one core (taskset -c 0)"] = [*one_core, *cli, str(video), "-o",
                                                                 str(tmp / "core.txt.gz")]
        times: dict[str, list[float]] = {k: [] for k in commands}
        rss: dict[str, float] = {}
        for _ in range(runs):
            for label, cmd in commands.items():
                s, mb = peak_rss(cmd)
                times[label].append(s)
                rss[label] = max(rss.get(label, 0.0), mb)
        fb = farneback_ms(video)
        ref_fps, ref_mb = REFERENCE[name]
        print(f"{name}, {frames} frames, {runs} runs each; one-scale Farneback {fb:.2f} ms a frame in this run")
        base = min(times[next(iter(commands))])
        for label, ts in times.items():
            best, med = min(ts), statistics.median(ts)
            ms = 1e3 * best / frames
            print(f"  {label}: min {best:.2f} s ({frames / best:.1f} frames/s), median {med:.2f} s "
                  f"({frames / med:.1f} frames/s); x{base / best:.2f} the previous path's speed; {ms / fb:.2f}x "
                  f"Farneback's time a frame; peak RSS {rss[label]:.0f} MB ({rss[label] / ref_mb:.2f}x the release's)")
            print(f"    against the reference release: x{frames / best / ref_fps:.2f} "
                  f"(median x{frames / med / ref_fps:.2f}) its {ref_fps} frames/s", end="")
            if name in QUIET_FARNEBACK_MS:
                # the release's time a frame in Farneback units, from its quiet machine, against ours in this run's
                release_units = 1e3 / ref_fps / QUIET_FARNEBACK_MS[name]
                print(f"; x{release_units / (ms / fb):.2f} in Farneback units (the release: {release_units:.1f}x "
                      f"Farneback on its quiet machine; this run's Farneback is {fb / QUIET_FARNEBACK_MS[name]:.2f}x "
                      f"that machine's)", end="")
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
