"""What Prefect's flow-run heartbeat costs a run that ends quickly, and what idtprior's sources snapshot costs, in one
run (the figures the README's Development section and ``tests/conftest.py`` quote).

    python benchmarks/flow_heartbeat.py [--reruns 5]

A two-stage pipeline (ingest, decode) on 4 tiny videos runs once against a temporary Prefect server; then its rerun
(every chunk up to date: orchestration only) is timed ``--reruns`` times with Prefect's default heartbeat (every 180 s
from a thread that sleeps in 1 s steps and that each flow run's end joins) and as many with heartbeats off, interleaved.
Then ``idtprior.sources.source_hash`` (taken once at ``import idtprior``) against the median heartbeat-off rerun.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reruns", type=int, default=5)
    args = ap.parse_args()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from idtprior.config import PipelineConfig
    from idtprior.flows.pipeline import pretrain_pipeline
    from idtprior.sources import source_hash
    from idtprior_testutils import write_moving_square_videos

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        write_moving_square_videos(Path(tmp) / "videos", 4, frames=12)
        cfg = PipelineConfig.model_validate({
            "workspace": f"{tmp}/ws", "stages": ["ingest", "decode"], "dask": {"n_workers": 0},
            "ingest": {"source": f"{tmp}/videos", "num_chunks": 2}, "decode": {"short_side": 32}})
        pretrain_pipeline(cfg, progress=False)
        times: dict[str, list[float]] = {"default": [], "off": []}
        for _ in range(args.reruns):
            for name in times:
                with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None} if name == "off" else {}):
                    t0 = time.perf_counter()
                    pretrain_pipeline(cfg, progress=False)
                    times[name].append(time.perf_counter() - t0)
    default, off = statistics.median(times["default"]), statistics.median(times["off"])
    print(f"two-stage pipeline rerun, median of {args.reruns}: heartbeat default {default:.2f} s, off {off:.2f} s "
          f"(ratio {default / off:.2f}x)")
    hashes = []
    for _ in range(5):
        t0 = time.perf_counter()
        source_hash()
        hashes.append(time.perf_counter() - t0)
    h = min(hashes)
    print(f"idtprior sources hash (at import): {h * 1000:.1f} ms, {h / off:.3f} of a heartbeat-off rerun")


if __name__ == "__main__":
    main()
