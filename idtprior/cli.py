"""The ``idtprior`` command line."""

import argparse
import os
import sys
import time
from pathlib import Path


def _prefect_defaults() -> None:
    # A temporary Prefect server starts slowly on small machines; telemetry cannot leave a closed network.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _split(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def cmd_make_demo_data(args) -> int:
    from idtprior.datasets.synthetic import make_demo_data

    videos = make_demo_data(args.out, videos_per_class=args.videos_per_class, frames=args.frames, width=args.width,
                            height=args.height, seed=args.seed, heldout_appearance=args.heldout_appearance,
                            progress=True)
    print(f"wrote {len(videos)} videos, labels.csv and UCF101-style splits to {args.out}")
    return 0


def _load(config: str, workspace: str | None, source: str | None, video_root: str | None = None,
          assignments: list[str] | None = None):
    """The run's config: the YAML file, another workspace/source/video root where given, then the ``--set``
    overrides, checked as the UI form's are (a bad key or value fails here, before anything is created)."""
    from idtprior.config import load_config
    from idtprior.presets import apply_overrides, parse_assignments, with_inputs

    return apply_overrides(with_inputs(load_config(config), workspace, source, video_root),
                           parse_assignments(assignments))


def _run_pipeline(command: str, cfg, **kwargs) -> dict | None:
    """Run the pipeline in this process; its results are persisted in the workspace. A failed stage prints one line
    (the stage's message; its run in Prefect holds the details) and returns None; a ConfigError (a missing
    prerequisite, a refused setting) is raised for ``main`` to print."""
    from idtprior.config.base import ConfigError
    from idtprior.flows.pipeline import in_workspace, pretrain_pipeline

    state = in_workspace(pretrain_pipeline, cfg)(cfg, return_state=True, **kwargs)
    if state.is_completed():
        return state.result()
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, ConfigError):
        raise exc
    print(f"idtprior {command}: error: {state.message}", file=sys.stderr)
    return None


def cmd_run(args) -> int:
    from idtprior.flows.pipeline import select_stages

    cfg = _load(args.config, args.workspace, args.source, args.video_root, args.set)
    select_stages(cfg, _split(args.stages), args.from_stage)  # a bad --stages / --from: one line, before any run
    result = _run_pipeline("run", cfg, stages=_split(args.stages), from_stage=args.from_stage,
                           dask_address=args.dask_address, retry_failed=args.retry_failed)
    if result is None:
        return 1
    _print_counts(result)
    return 0


def cmd_demo(args) -> int:
    from idtprior.config import bundled_config, load_config
    from idtprior.flows.pipeline import select_stages
    from idtprior.presets import apply_overrides, demo_inputs, ensure_demo_data, parse_assignments

    cfg = apply_overrides(load_config(args.config or bundled_config("demo")), parse_assignments(args.set))
    select_stages(cfg, _split(args.stages))  # a bad --stages: one line, before the videos are rendered
    ensure_demo_data(cfg, Path(args.data), progress=True)
    cfg = demo_inputs(cfg, args.data, args.workspace)
    result = _run_pipeline("demo", cfg, stages=_split(args.stages), dask_address=args.dask_address)
    if result is None:
        return 1
    report, extra = None, {}
    if "evaluate" in result:  # the paper's tables were computed: the report that shows them, with the figures
        from idtprior.report import write_report

        t0 = time.perf_counter()
        report = write_report(cfg.workspace, None, idt_config=cfg.idt)
        extra["report"] = time.perf_counter() - t0
    _print_counts(result, extra)
    if report is not None:
        print(f"report: {report}")
    print(f"workspace: {cfg.workspace}  (inspect with: idtprior status {cfg.workspace})")
    return 0


def _print_counts(result: dict, extra_times: dict[str, float] | None = None) -> None:
    for stage, counts in result.items():
        extra = "".join(f", {k} {v}" for k, v in counts.items() if k not in ("stage", "chunks", "videos_ok",
                                                                             "videos_failed", "seconds"))
        print(f"{stage:>10}: {counts['chunks']} chunks, {counts['videos_ok']} videos ok, "
              f"{counts['videos_failed']} failed{extra}")
    times = {stage: counts["seconds"] for stage, counts in result.items() if "seconds" in counts}
    times.update(extra_times or {})  # work after the stages (the demo's report)
    if times:
        total = sum(times.values())
        print("wall time per stage: " + ", ".join(f"{s} {_duration(t)}" for s, t in times.items())
              + f"; total {_duration(total)}")


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def cmd_serve(args) -> int:
    from idtprior.flows.deployments import serve

    serve(limit=args.limit)
    return 0


def cmd_status(args) -> int:
    from idtprior.config import STAGES
    from idtprior.storage import Workspace, read_manifest
    from idtprior.storage.status import NAMED_RECORD_STAGES, workspace_status
    from idtprior.runtime.pins import provenance

    ws = Workspace(args.workspace)
    manifest = read_manifest(ws)
    if not manifest:
        print(f"{ws.url}: no manifest yet (run the ingest stage)")
        return 1
    by_status: dict[str, int] = {}
    for row in manifest:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    print(f"workspace {ws.url}: {len(manifest)} videos in the manifest ("
          + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) + f"), {ws.num_chunks()} chunks")
    expected = None
    if args.config:
        from idtprior.stages.registry import expected_fingerprints

        # the config's own workspace is not the one asked about: plan against WORKSPACE
        cfg = _load(args.config, ws.url, None)
        expected = expected_fingerprints(cfg, ws)
        print(f"against {args.config} (stages {', '.join(cfg.stages)}; nothing is run or written):")
    stages = list(STAGES)
    stages.insert(stages.index("encode") + 1, "sketches")  # encode's assembled (N, S) rows, a record of its own
    for st in workspace_status(ws, tuple(stages), expected, manifest):  # the manifest read once (235k rows: ~3 s)
        if st.whole:
            # seconds only where the stage's task measured them (the codebook, cluster and training tasks do not)
            took = f"  {st.seconds:.1f} s" if st.seconds else ""
            line = f"done {st.created_iso}  fingerprint {st.fingerprint[:12]}{took}" if st.done else "not run"
        elif st.stage in NAMED_RECORD_STAGES:
            line = f"records {st.chunks_done}/{st.chunks_expected}" if expected is not None else \
                f"records {st.chunks_done}"
        else:
            line = (f"chunks {st.chunks_done}/{st.chunks_expected}  videos ok {st.videos_ok}  "
                    f"failed {st.videos_failed}")
            if st.videos_retryable:
                line += f" ({st.videos_retryable} retryable: --retry-failed)"
            if st.videos_without_boxes:
                line += f"  without boxes {st.videos_without_boxes} (their detection failed)"
        if st.stage == "sketches" and not st.done and expected is None:
            continue
        print(f"  {st.stage:<16} {line}" + (f"  [{st.check}]" if st.check else ""))
        if st.done:
            for note in provenance(st.stage, st.records.values()):
                print(f"      {note}")
        for vid, err in sorted(st.errors.items())[: args.max_errors]:
            print(f"      {vid}: {err}")
        if len(st.errors) > args.max_errors:
            print(f"      ... {len(st.errors) - args.max_errors} more")
    dups = [r for r in manifest if r.duplicate_of]
    for r in dups[: args.max_errors]:
        print(f"  duplicate: {r.video_id} has the same content as {r.duplicate_of}")
    return 0


def cmd_verify(args) -> int:
    from idtprior.config import STAGES
    from idtprior.storage import Workspace
    from idtprior.storage.integrity import report_lines, verify_workspace
    from idtprior.storage.lock import StageBusy

    ws = Workspace(args.workspace)
    try:
        report = verify_workspace(ws, _split(args.stages), full=not args.quick, repair=args.repair,
                                  lock_stages=STAGES)
    except StageBusy as e:
        print(f"error: {e}; nothing was checked or removed", file=sys.stderr)
        return 2
    for line in report_lines(report):
        print(line)
    return 1 if report.unrepaired else 0


def cmd_recompute(args) -> int:
    from idtprior.config import STAGES
    from idtprior.storage import Workspace
    from idtprior.storage.lock import StageBusy
    from idtprior.runtime.pins import invalidate_repinned

    ws = Workspace(args.workspace)
    stages = _split(args.stages) or [*STAGES, "sketches"]
    try:  # it rewrites records under each stage's lock: never beside a run that commits them
        done = invalidate_repinned(ws, stages)
    except StageBusy as e:
        print(f"error: {e}; run it again when that run has ended (it goes on where it stopped)", file=sys.stderr)
        return 2
    for stage, chunks in done.items():
        print(f"{stage}: {len(chunks)} records computed by code re-pinned since will be recomputed by the next run "
              f"({', '.join(sorted(chunks)[:5])}{', ...' if len(chunks) > 5 else ''})")
    if not done:
        print(f"{ws.url}: no record was computed by code re-pinned since")
    return 0


def cmd_inspect(args) -> int:
    from idtprior.inspect import inspect_stage

    for path in inspect_stage(args.workspace, args.stage, args.video, args.out):
        print(path)
    return 0


def cmd_report(args) -> int:
    from idtprior.report import write_report

    print(write_report(args.workspace, args.out, seed=args.seed))
    return 0


def cmd_plan(args) -> int:
    from idtprior.config.base import ConfigError
    from idtprior.config import bundled_config, load_config
    from idtprior.units import ORCHESTRATION_UNITS, Units, measure_units
    from idtprior.plan import format_plan, plan

    config = Path(args.config)
    if not config.exists() and "/" not in args.config and not args.config.endswith((".yaml", ".yml")):
        config = bundled_config(args.config)  # a packaged config by name
    cfg = load_config(config)
    try:
        width, height = (int(v) for v in args.frame_size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--frame-size {args.frame_size!r}: expected WIDTHxHEIGHT, e.g. 340x256") from None
    for name in ("videos", "cores"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} {getattr(args, name)}: must be at least 1")
    if args.train_fraction is not None and not 0 < args.train_fraction <= 1:
        raise ConfigError(f"--train-fraction {args.train_fraction}: must be in (0, 1]")
    if args.mean_seconds <= 0 or args.fps <= 0 or args.gpus < 0:
        raise ConfigError(f"--mean-seconds {args.mean_seconds}, --fps {args.fps} must be positive and --gpus "
                          f"{args.gpus} at least 0")
    units = Units.load(args.units) if args.units else Units.load()
    if args.calibrate:
        measured = measure_units(quick=True)
        # the orchestration's costs and the GPU's figures are not measured by a calibration: kept from the units file
        units = Units(**{**units.__dict__, **{k: v for k, v in measured.__dict__.items()
                                              if k not in ORCHESTRATION_UNITS + ("gpu",)}})
        units.how = f"calibrated here ({measured.how}); orchestration and GPU figures from the stored units"
    rows = plan(cfg, units, args.videos, args.mean_seconds, args.fps, width, height, args.cores, args.gpus,
                args.train_fraction, _split(args.stages))
    print(format_plan(rows, units, f"plan for {config}: {args.videos} videos of {args.mean_seconds} s at "
                                    f"{args.fps} fps, {width}x{height}, {args.cores} cores, {args.gpus} GPUs"))
    return 0


def cmd_export_boxes(args) -> int:
    from idtprior.storage import Workspace
    from idtprior.stages.detect import export_boxes

    files = export_boxes(Workspace(args.workspace), args.out, _split(args.videos))
    print(f"wrote {len(files)} bb-files to {args.out}")
    return 0


def _train_stage_config(workspace: str, config: str | None):
    """``--config`` (a YAML file, or a bundled preset's name), else the config ``workspace`` was last run with; its
    workspace set to ``workspace``."""
    from idtprior.config.base import ConfigError
    from idtprior.config import bundled_config, load_config

    if config is None:
        from idtprior.runtime.runs import CONFIG_FILE, remembered_config

        cfg = remembered_config(workspace)
        if cfg is None:
            raise ConfigError(f"workspace {workspace} has no {CONFIG_FILE} (no stage has run there): give --config")
    else:
        cfg = load_config(config if Path(config).exists() or config.endswith((".yaml", ".yml"))
                          else bundled_config(config))
    return cfg.with_updates(workspace=workspace)


def cmd_train_stage(args) -> int:
    from idtprior.stages.pretrain.flow import train_stage_command
    from idtprior.sources import check_worker

    if args.sources:  # a job's processes run what the flow that wrote the job runs
        check_worker(args.sources, f"{args.stage} (idtprior train-stage)")
    cfg = _train_stage_config(args.workspace, args.config)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    record = train_stage_command(cfg, args.stage, fingerprint=args.fingerprint, prepare_only=args.prepare_only,
                                 progress=progress)
    if args.prepare_only:
        print(f"{args.stage}: run folder ready in {cfg.workspace}")
    elif record is not None:  # global rank 0; the other ranks of a job print nothing
        info = record.videos["model"]
        print(f"{args.stage}: committed {record.fingerprint[:12]} in {cfg.workspace}: {info['epochs']} epochs, "
              f"kNN {info['knn']}")
    return 0


VERBOSE_HELP = ("print every log line (Prefect's for each flow and task run, Dask's, Lightning's) with tracebacks; by "
                "default the terminal shows one progress display per stage, the stages' results, warnings and "
                "errors, and the rest is in the run's Prefect logs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idtprior", description="Video representations from dense trajectory "
                                     "clustering, as a Prefect pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="render the synthetic motion benchmark and run the pipeline on it")
    p.add_argument("--workspace", default="demo-workspace")
    p.add_argument("--data", default="demo-data", help="where the demo videos are rendered (reused if present)")
    p.add_argument("--config", default=None, help="a config to use instead of the bundled configs/demo.yaml")
    p.add_argument("--stages", default=None, help="comma-separated stages (default: the config's)")
    p.add_argument("--dask-address", default=None)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--verify-checksums", action="store_true", help=VERIFY_HELP)
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run the pipeline (or some stages) from a config")
    p.add_argument("config")
    p.add_argument("--stages", default=None, help="comma-separated stages, e.g. ingest,decode")
    p.add_argument("--from", dest="from_stage", default=None, help="run this stage and every later one")
    p.add_argument("--workspace", default=None, help="override the config's workspace")
    p.add_argument("--source", default=None, help="override ingest.source (folder or list file)")
    p.add_argument("--video-root", default=None, help="override ingest.video_root, the folder that relative paths in "
                   "a list file resolve against (with --source: default the list file's folder)")
    p.add_argument("--dask-address", default=None, help="an existing Dask scheduler (default: a LocalCluster)")
    p.add_argument("--retry-failed", nargs="?", const="retryable", default=None, choices=("retryable", "all"),
                   help="try recorded failures of the selected stages again: those of a fault of the environment "
                   "(memory, a device, storage; the default), or all of them; the chunks holding them are computed "
                   "again, and what read them downstream")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--verify-checksums", action="store_true", help=VERIFY_HELP)
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="register the deployments (the pipeline, and each stage on the cpu and gpu pools) "
                       "with the Prefect server at PREFECT_API_URL and run them from this process until Ctrl-C")
    p.add_argument("--limit", type=int, default=None, help="at most this many flow runs at once (at least 2: a "
                   "pipeline run waits for its stage runs; default: no limit)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="per stage: chunks done, videos ok/failed, with the errors; with --config, "
                       "which stages a run with that config would redo")
    p.add_argument("workspace")
    p.add_argument("--config", default=None, help="a config YAML to check the workspace against: "
                   "each stage is 'up to date' or 'out of date' (its plan is built, nothing is run or written)")
    p.add_argument("--max-errors", type=int, default=20)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("verify", help="check every commit record against its stored data (files present, sizes, "
                       "checksums) and list what no record names; exit status 1 while a problem is left")
    p.add_argument("workspace")
    p.add_argument("--stages", default=None, help="comma-separated stages (default: every stage the workspace holds)")
    p.add_argument("--quick", action="store_true", help="sizes only, no checksums (one listing, no data read)")
    p.add_argument("--repair", action="store_true", help="drop the records of bad chunks and remove orphans: the "
                   "next run recomputes exactly the dropped chunks")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("recompute", help="undo a re-pin for a workspace: the records computed by code re-pinned since "
                       "(listed by `idtprior status`) are recomputed, with what depends on them, by the next run")
    p.add_argument("workspace")
    p.add_argument("--repinned", action="store_true", required=True,
                   help="the records computed by code re-pinned since (the only selection there is)")
    p.add_argument("--stages", default=None, help="comma-separated stages (default: every stage)")
    p.set_defaults(func=cmd_recompute)

    p = sub.add_parser("make-demo-data", help="render the synthetic motion benchmark")
    p.add_argument("out")
    p.add_argument("--videos-per-class", type=int, default=40)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout-appearance", action="store_true",
                   help="test videos whose backgrounds, actor shapes and colours never occur in training (as UCF101's "
                        "group-wise split)")
    p.set_defaults(func=cmd_make_demo_data)

    p = sub.add_parser("inspect", help="render a stage's output for one video to files")
    p.add_argument("workspace")
    p.add_argument("stage")
    p.add_argument("video")
    p.add_argument("-o", "--out", default=None, help="output folder (default: WORKSPACE/artifacts/inspect)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("report", help="write report.md and its PNGs: the evaluation tables, the kNN table and curves "
                       "of each training stage, the cluster montages (IDT, LA's bank, joint); missing stages listed")
    p.add_argument("workspace")
    p.add_argument("-o", "--out", default=None, help="output folder (default: WORKSPACE/artifacts/report)")
    p.add_argument("--seed", type=int, default=0, help="seeds the montages' picks and the bank's K-means")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("plan", help="per stage: core-hours, GPU-hours, wall time and storage of a run of CONFIG, "
                       "from per-unit costs measured by the benchmarks (stored in the package) or here (--calibrate)")
    p.add_argument("config", help="a config file, or a packaged config's name (demo, kinetics400)")
    p.add_argument("--videos", type=int, required=True, help="videos in the collection")
    p.add_argument("--mean-seconds", type=float, default=10.0, help="mean video length (default 10)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of the videos (default 25)")
    p.add_argument("--frame-size", default="340x256", help="source frame size WIDTHxHEIGHT (default 340x256)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU cores (default: this machine's)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs for the training stages (default 0: on the CPU)")
    p.add_argument("--train-fraction", type=float, default=None,
                   help="share of the videos in the training split (default 1, or 0.7 when pretrain.train_split is "
                        "set)")
    p.add_argument("--stages", default=None, help="comma-separated stages (default: the config's)")
    p.add_argument("--calibrate", action="store_true", help="measure the per-unit costs on this machine first "
                   "(under a minute)")
    p.add_argument("--units", default=None, help="a units JSON file (default: the package's)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("export-boxes", help="write the detect stage's person boxes as bb-files of the reference IDT "
                       "release (<video_id>.bb; import them elsewhere with detect.bb_folder)")
    p.add_argument("workspace")
    p.add_argument("out", help="output folder")
    p.add_argument("--videos", default=None, help="comma-separated video ids (default: all)")
    p.set_defaults(func=cmd_export_boxes)

    from idtprior.config.training import TRAIN_STAGES

    p = sub.add_parser("train-stage", help="train one training stage in this process, as one process of a DDP job "
                       "(under srun on every node, or alone with its devices), and commit the stage's record: what a "
                       "multi-node stage's batch job runs")
    p.add_argument("workspace")
    p.add_argument("stage", choices=TRAIN_STAGES)
    p.add_argument("--config", default=None, help="a config YAML or a preset name (default: the config the "
                   "workspace was last run with, its config.yaml)")
    p.add_argument("--fingerprint", default=None, help="the record key the submitter planned: train nothing when "
                   "the stage's plan differs (the workspace changed since)")
    p.add_argument("--sources", default=None, help="the idtprior sources hash of the flow that wrote the job "
                   "(idtprior.SOURCES): refuse to train when this process runs other sources (restart after a pull)")
    p.add_argument("--prepare-only", action="store_true", help="ready the run folder (adopt a shorter run's "
                   "checkpoint) and stop; a batch job does it in one process before its ranks start")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="Lightning's progress bar (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_train_stage)

    try:
        from idtprior.video.idt.cli import add_idt_arguments, run_idt
    except ImportError:
        pass
    else:
        p = sub.add_parser("idt", help="Improved Dense Trajectories of one video (a drop-in for DenseTrackStab)")
        add_idt_arguments(p)
        p.set_defaults(func=run_idt)
    return parser


SET_HELP = ("set a config value by its dotted key, e.g. --set pretrain_la.epochs=5 --set ingest.num_chunks=16 (repeat "
            "for more; the value is read as YAML: 5, true, [a, b]); the same overrides as the UI form's, checked the "
            "same way")
VERIFY_HELP = ("check the crc32c of every stored file a stage opens as its input, not only that the files are there "
               "with their sizes (one more read of each; sets IDTPRIOR_VERIFY=full for this process and the local Dask "
               "workers; set it on the workers of an existing scheduler yourself)")


def apply_verify(args) -> None:
    """``--verify-checksums``: every reader of this process (and of the Dask workers it starts) checks checksums."""
    if getattr(args, "verify_checksums", False):
        from idtprior.storage.integrity import VERIFY_ENV

        os.environ[VERIFY_ENV] = "full"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["idt"]:
        # the drop-in extractor needs neither the pipeline's config (pydantic) nor its storage (zarr): half a second of
        # imports, a tenth of the KTH clip's extraction, stays out of a command users time against the release
        from idtprior.video.idt.cli import main as idt_main

        return idt_main(argv[1:])
    _prefect_defaults()
    args = build_parser().parse_args(argv)
    apply_verify(args)
    if args.command in ("run", "demo") and not args.verbose:
        from idtprior.terminal import use_terminal_logging

        use_terminal_logging()  # before Prefect is imported: it reads its logging settings once, at import
    from idtprior.config.base import ConfigError
    from idtprior.datasets.lists import ListFormatError
    from idtprior.sources import StaleCode

    try:
        return int(args.func(args) or 0)
    except (ConfigError, ListFormatError, OSError, KeyError, StaleCode) as e:
        # one line, no traceback: a bad config or list, a workspace path that is a file, a file that cannot be read
        text = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"idtprior {args.command}: error: {text}", file=sys.stderr)
        return 2
    except Exception as e:
        if not _server_unreachable(e):
            raise
        url = os.environ.get("PREFECT_API_URL", "")
        print(f"idtprior {args.command}: error: the Prefect server at {url} (PREFECT_API_URL) cannot be reached "
              f"({type(e).__name__}: {e}); start it (prefect server start) or unset PREFECT_API_URL to run with a "
              f"temporary server; what the run committed before is kept, and a rerun recomputes none of it",
              file=sys.stderr)
        return 3


def _server_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the Prefect API could not be reached."""
    import httpx

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, httpx.TransportError) or (
                isinstance(exc, RuntimeError) and str(exc).startswith("Failed to reach API")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
