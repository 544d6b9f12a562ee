"""The ``idtprior`` command line."""

import argparse
import os
import sys

from idtprior.commands import (cmd_demo, cmd_export_boxes, cmd_inspect, cmd_make_demo_data, cmd_plan, cmd_recompute,
                               cmd_report, cmd_run, cmd_serve, cmd_status, cmd_train_stage, cmd_verify)


def _prefect_defaults() -> None:
    # A temporary Prefect server starts slowly on small machines; telemetry cannot leave a closed network.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


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
    if args.command == "serve":
        from idtprior.terminal import use_serve_logging

        use_serve_logging()  # before Dask is imported here, and inherited by the flow runs serve starts
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
