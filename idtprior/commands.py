"""What each ``idtprior`` subcommand does (``cmd_<name>``, given the parsed arguments; returns the exit status).
``idtprior.cli`` parses the command line and calls them."""

import sys
import time
from pathlib import Path


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

