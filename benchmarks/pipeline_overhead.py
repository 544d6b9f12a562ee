"""The orchestration's own cost: a collection of tiny videos (a few frames each) through ingest and decode, as a user
runs them (``idtprior run`` with a Dask LocalCluster of one worker per core and a temporary Prefect server).

    python benchmarks/pipeline_overhead.py                      # 20,000 videos (about 20 minutes on 2 cores)
    python benchmarks/pipeline_overhead.py --videos 2000 --write-units

Measured in one run:
- each stage's wall time for a small collection (``--small`` videos: the fixed cost of a stage) and for the large one;
  the slope is the orchestration's serial seconds per video (Prefect task runs, Dask submissions, records, manifest);
- the same videos' work alone (probe; decode + resize + store) in this process, one thread: the compute the stages
  spread over the cores, so ``wall - compute / cores`` is what the orchestration adds;
- a rerun with everything cached (each chunk checks its record and skips);
- the manifest rebuild and ``idtprior status`` on the large workspace;
then an extrapolation to Kinetics-400 (235,000 videos in 1,000 chunks), assuming the costs stay linear in videos;
- the fixed cost of the stages that run in the flow's process (fit_codebook, cluster): a small pipeline on textured
  pans (``SERIAL``), their wall less the work ``idtprior plan`` counts for them (``--serial-only``: this alone).
``--write-units`` stores the fixed and per-video overheads into ``idtprior/plan_units.json`` for ``idtprior plan``.
"""

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from idtprior.plan import stage_wall_seconds

IDTPRIOR = str(Path(sys.executable).with_name("idtprior"))


def _write(args: tuple[str, int, int, int, tuple[int, int]]) -> None:
    from idtprior.video.io import write_video

    folder, start, stop, n_frames, (width, height) = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n_frames)]
        write_video(Path(folder) / f"{i // 1000:03d}" / f"v{i:06d}.mp4", frames)


def make_videos(folder: Path, n: int, frames: int, size: tuple[int, int] = (32, 24)) -> float:
    for i in range(0, n, 1000):
        (folder / f"{i // 1000:03d}").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    step = 250
    with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        pool.map(_write, [(str(folder), s, min(s + step, n), frames, size) for s in range(0, n, step)])
    return time.perf_counter() - t0


def write_config(path: Path, videos: Path, workspace: Path, chunks: int, epochs: int = 0,
                 labels: Path | None = None) -> None:
    training = "" if not epochs else f"""pretrain:
  width: {TRAIN["width"]}
  clip_length: {TRAIN["clip_length"]}
  crop_size: {TRAIN["crop_size"]}
  batch_size: 8
  negatives: 16
  la_k: 16
  num_workers: 2
  eval_labels_file: {labels}
pretrain_ir:
  epochs: {epochs}
  lr: 0.01
"""
    path.write_text(f"""workspace: {workspace}
stages: [ingest, decode{", pretrain_ir" if epochs else ""}]
{training}ingest:
  source: {videos}
  source_format: folder
  num_chunks: {chunks}
decode:
  short_side: 24
dask:
  n_workers: {os.cpu_count() or 1}
""")


TRAIN = {"width": 0.25, "clip_length": 8, "crop_size": 32, "videos": 96, "frames": 16, "size": (64, 48)}
"""The training stage's measurement: 96 videos of 16 frames at 64x48 with labels (the kNN tables), a width-1/4 network
on 8x32x32 clips, 2 loader workers: epochs of about a second, so a per-epoch cost of the stage shows."""


SERIAL = {"videos": 24, "frames": 24, "size": (160, 120), "k": 2}
"""The measurement of the stages that run in the flow's process (fit_codebook, cluster): 24 textured pans (the
calibration's content, so that the IDT units plan subtracts fit it) of 24 frames at 160x120, a small codebook and
k-means; their wall time less the work plan counts for them (EM, k-means, the montage's IDT) is their fixed cost."""


def serial_config(path: Path, videos: Path, workspace: Path) -> None:
    n = SERIAL["videos"]
    path.write_text(f"""workspace: {workspace}
stages: [ingest, decode, idt, fit_codebook, encode, cluster]
ingest:
  source: {videos}
  source_format: folder
  num_chunks: 1
decode:
  short_side: 128
idt:
  scale_num: 8
  track_length: 15
  sample_videos: {n}
  sample_rows: 200
codebook:
  pca_mode: per_type
  gmm_components: 4
  gmm_iters: 20
  sketch_dim: 256
cluster:
  k: {SERIAL["k"]}
  runs: 2
  iters: 10
  n_init: 2
dask:
  n_workers: {os.cpu_count() or 1}
""")


def serial_stage_overheads(root: Path, cores: int, repeats: int = 2) -> dict[str, list[float]]:
    """Wall seconds beyond plan's counted work of fit_codebook and cluster in ``repeats`` fresh pipeline runs (the
    stages run after the earlier ones in one process, as in a user's run: the imports are paid before them)."""
    from idtprior.config import load_config
    from idtprior.datasets.synthetic import textured_pan_video
    from idtprior.units import Units
    from idtprior.plan import plan
    from idtprior.video.io import write_video

    videos = root / "videos-serial"
    videos.mkdir(parents=True, exist_ok=True)
    w, h = SERIAL["size"]
    for i in range(SERIAL["videos"]):
        write_video(videos / f"v{i:03d}.mp4", textured_pan_video(SERIAL["frames"], h, w, seed=i))
    bare = replace(Units.load(), stage_overhead_s=0.0)
    out: dict[str, list[float]] = {"fit_codebook": [], "cluster": []}
    for r in range(repeats):
        config = root / f"serial{r}.yaml"
        serial_config(config, videos, root / f"ws-serial{r}")
        measured = run(config)
        modelled = {p.stage: p.wall_s for p in plan(load_config(config), bare, SERIAL["videos"],
                                                      SERIAL["frames"] / 25, 25.0, w, h, cores,
                                                      stages=list(out))}
        for stage in out:
            out[stage].append(measured[stage] - modelled[stage])
        print(f"stages in the flow's process, run {r + 1}: " + ", ".join(
            f"{s} {measured[s]:.1f} s measured, {modelled[s]:.1f} s of counted work" for s in out), flush=True)
    return out


def run(config: Path, *extra: str) -> dict[str, float]:
    """``idtprior run`` in a subprocess; each stage's wall seconds from its closing line, and the whole command's."""
    t0 = time.perf_counter()
    out = subprocess.run([IDTPRIOR, "run", str(config), *extra], capture_output=True, text=True,
                         env={**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"})
    total = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"idtprior run {config} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    times = stage_wall_seconds(out.stdout)  # as the user reads them: the run's closing line
    times["command"] = total
    return times


def compute_per_video(videos: Path, n: int) -> tuple[float, float]:
    """Seconds per video of probing and of decoding + resizing + storing, in this process with one thread."""
    import cv2
    import zarr

    from idtprior.storage.frames import write_frames
    from idtprior.video.io import iter_frames, probe_video

    cv2.setNumThreads(1)
    paths = sorted(videos.rglob("*.mp4"))[:n]
    t0 = time.perf_counter()
    for p in paths:
        probe_video(p)
    probe = (time.perf_counter() - t0) / len(paths)
    with tempfile.TemporaryDirectory() as tmp:
        group = zarr.open_group(tmp, mode="w")
        t0 = time.perf_counter()
        for i, p in enumerate(paths):
            write_frames(group, f"v{i}", iter_frames(p, short_side=24), 16, 25.0)
        decode = (time.perf_counter() - t0) / len(paths)
    return probe, decode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=20_000)
    ap.add_argument("--small", type=int, default=20, help="videos of the small collection (the fixed cost)")
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--videos-per-chunk", type=int, default=235, help="as Kinetics-400 in 1,000 chunks")
    ap.add_argument("--out", default=None, help="working folder (default: a temporary one, removed)")
    ap.add_argument("--write-units", action="store_true", help="store the overheads in idtprior/plan_units.json")
    ap.add_argument("--training-only", action="store_true", help="measure (and --write-units) the training stage's only")
    ap.add_argument("--serial-only", action="store_true",
                    help="measure (and --write-units) the fixed cost of the stages in the flow's process only")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    tmp = tempfile.TemporaryDirectory(prefix="idtprior-overhead-") if args.out is None else None
    root = Path(args.out or tmp.name)
    serial_fixed = 0.0
    if not args.training_only:
        serial = serial_stage_overheads(root, cores)
        serial_fixed = float(np.mean([v for vs in serial.values() for v in vs]))
        print("fixed cost of a stage in the flow's process: " + ", ".join(
            f"{s} {', '.join(f'{v:.2f}' for v in vs)} s" for s, vs in serial.items()) + f"; mean {serial_fixed:.2f} s",
              flush=True)
    if args.serial_only:
        if args.write_units:
            from idtprior.units import Units

            u = Units.load()
            u.stage_overhead_s = serial_fixed
            u.save()
            print(f"plan units: stage_overhead_s {u.stage_overhead_s:.2f}")
        return 0
    results = {}
    for name, n in () if args.training_only else (("small", args.small), ("large", args.videos)):
        videos = root / f"videos-{name}"
        made = make_videos(videos, n, args.frames)
        chunks = max(1, round(n / args.videos_per_chunk))
        config = root / f"{name}.yaml"
        write_config(config, videos, root / f"ws-{name}", chunks)
        first = run(config)
        again = run(config)
        results[name] = (n, chunks, first, again)
        print(f"{name}: {n} videos of {args.frames} frames (written in {made:.0f} s), {chunks} chunks: "
              f"ingest {first['ingest']:.1f} s, decode {first['decode']:.1f} s, command {first['command']:.1f} s; "
              f"cached rerun: ingest {again['ingest']:.1f} s, decode {again['decode']:.1f} s", flush=True)
    # a training stage's own cost in the pipeline (records, progress artifacts, the kNN reports, pictures): runs of 1
    # and 4 epochs, less the compute idtprior plan counts for them (its units: training, embedding, loader)
    from idtprior.config import load_config
    from idtprior.units import Units
    from idtprior.plan import plan

    tv = root / "videos-train"
    make_videos(tv, TRAIN["videos"], TRAIN["frames"], TRAIN["size"])
    labels = root / "train-labels.csv"
    labels.write_text("video_id,label\n" + "".join(f"v{i:06d},c{i % 4}\n" for i in range(TRAIN["videos"])))
    train, modelled = {}, {}
    for epochs in (1, 4):
        config = root / f"train{epochs}.yaml"
        write_config(config, tv, root / f"ws-train{epochs}", 1, epochs, labels)
        train[epochs] = run(config)["pretrain_ir"]
        bare = Units(**{**Units.load().__dict__, "train_stage_overhead_s": 0.0, "stage_epoch_overhead_s": 0.0,
                        "train_setup_s": 0.0, "epoch_overhead_s": 0.0})
        modelled[epochs] = plan(load_config(config), bare, TRAIN["videos"], TRAIN["frames"] / 25, 25.0, *TRAIN["size"],
                                cores, train_fraction=1.0, stages=["pretrain_ir"])[0].wall_s
    per_epoch = (train[4] - train[1] - modelled[4] + modelled[1]) / 3
    train_fixed = train[1] - modelled[1] - per_epoch
    print(f"training stage in the pipeline ({TRAIN['videos']} videos, width {TRAIN['width']}, "
          f"{TRAIN['clip_length']}x{TRAIN['crop_size']}x{TRAIN['crop_size']} clips): 1 epoch {train[1]:.1f} s, 4 epochs "
          f"{train[4]:.1f} s, their compute as plan counts it {modelled[1]:.1f} s and {modelled[4]:.1f} s: "
          f"{per_epoch:.2f} s an epoch and {train_fixed:.1f} s fixed beyond it", flush=True)
    if args.training_only:
        if args.write_units:
            u = Units.load()
            u.stage_epoch_overhead_s, u.train_stage_overhead_s = max(0.0, float(per_epoch)), float(train_fixed)
            u.save()
            print(f"plan units: stage_epoch_overhead_s {u.stage_epoch_overhead_s:.2f}, train_stage_overhead_s "
                  f"{u.train_stage_overhead_s:.2f}")
        return 0
    probe, decode = compute_per_video(root / "videos-small", args.small)
    print(f"compute per video, one thread in this process: probe {probe * 1e3:.1f} ms, decode + store "
          f"{decode * 1e3:.1f} ms")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from idtprior.runtime.records import rebuild_manifest
    from idtprior.storage import Workspace

    ws = Workspace(str(root / "ws-large"))
    t0 = time.perf_counter()
    rows = rebuild_manifest(ws)
    rebuild = time.perf_counter() - t0
    t0 = time.perf_counter()
    status = subprocess.run([IDTPRIOR, "status", str(root / "ws-large")], capture_output=True, text=True)
    status_s = time.perf_counter() - t0
    print(f"manifest rebuild of {len(rows)} videos: {rebuild:.2f} s; idtprior status: {status_s:.2f} s "
          f"(rc {status.returncode})")

    (n0, _, s0, r0), (n1, _, s1, r1) = results["small"], results["large"]
    units = {}
    for stage, work in (("ingest", probe), ("decode", decode)):
        slope = (s1[stage] - s0[stage]) / (n1 - n0)
        overhead = slope - work / cores
        cached = (r1[stage] - r0[stage]) / (n1 - n0)
        units[stage] = (s0[stage], overhead)
        print(f"{stage}: fixed {s0[stage]:.1f} s a stage; {slope * 1e3:.2f} ms of wall per video, of which compute "
              f"{work / cores * 1e3:.2f} ms ({work * 1e3:.1f} ms on one core over {cores} cores): orchestration "
              f"{overhead * 1e3:.2f} ms per video ({overhead / slope:.0%} of the stage's time per video); "
              f"cached rerun {cached * 1e3:.2f} ms per video")
        k400 = s0[stage] + 235_000 * overhead
        print(f"  Kinetics-400 (235,000 videos, 1,000 chunks): orchestration alone {k400 / 3600:.2f} h of wall "
              f"for {stage}, against the compute of its real videos")
    print(f"manifest rebuild and status at 235,000 videos (linear): {rebuild * 235_000 / len(rows):.1f} s, "
          f"{status_s * 235_000 / len(rows):.1f} s")
    if args.write_units:
        from idtprior.units import Units

        u = Units.load()
        u.stage_overhead_s = serial_fixed
        u.ingest_overhead_s, u.fanout_overhead_s = float(units["ingest"][0]), float(units["decode"][0])
        u.video_overhead_s = float(max(0.0, np.mean([o for _, o in units.values()])))
        u.stage_epoch_overhead_s, u.train_stage_overhead_s = max(0.0, float(per_epoch)), float(train_fixed)
        u.save()
        print(f"plan units: stage_overhead_s {u.stage_overhead_s:.2f}, ingest_overhead_s {u.ingest_overhead_s:.2f}, "
              f"fanout_overhead_s {u.fanout_overhead_s:.2f}, video_overhead_s {u.video_overhead_s:.5f}, "
              f"stage_epoch_overhead_s {per_epoch:.2f}, train_stage_overhead_s {train_fixed:.2f}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
