"""``idtprior plan`` against reality: the demo run from scratch (``idtprior demo`` in a new workspace, its stages'
wall times from its closing line, as the user reads them), beside ``idtprior plan`` for the same config, collection and cores from the
package's per-unit costs (measured by the other benchmarks, never from a demo run). Prints each stage's
predicted / measured ratio and whether it is within 30%.

    python benchmarks/plan_check.py [--keep DIR]      # about 10 minutes on 2 cores
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from idtprior.config import bundled_config, load_config
from idtprior.plan import plan, stage_wall_seconds
from idtprior.units import Units

IDTPRIOR = str(Path(sys.executable).with_name("idtprior"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", default=None, help="run in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    cfg = load_config(bundled_config("demo"))
    d = cfg.demo
    videos, seconds = 6 * d.videos_per_class, d.frames / 25.0
    cores = os.cpu_count() or 1
    rows = plan(cfg, Units.load(), videos, seconds, 25.0, d.width, d.height, cores)
    tmp = tempfile.TemporaryDirectory(prefix="idtprior-plan-check-") if args.keep is None else None
    root = Path(args.keep or tmp.name)
    out = subprocess.run([IDTPRIOR, "demo", "--workspace", str(root / "ws"), "--data", str(root / "data")],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"idtprior demo failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    measured = stage_wall_seconds(out.stdout)
    print(f"the demo ({videos} videos of {seconds:.2f} s at {d.width}x{d.height}) on {cores} cores: "
          f"predicted by idtprior plan (units: {Units.load().how}) against measured")
    print("| stage | predicted | measured | predicted / measured | within 30% |")
    print("|---|---|---|---|---|")
    within = 0
    modelled = [r for r in rows if math.isfinite(r.wall_s)]
    for r in rows:
        m = measured.get(r.stage)
        if m is None or not math.isfinite(r.wall_s):  # evaluate is not modelled: its cost is the labelled set's
            print(f"| {r.stage} | {r.wall_s:.1f} s | {'-' if m is None else f'{m:.1f} s'} | - | - |")
            continue
        ok = abs(r.wall_s / m - 1) <= 0.3
        within += ok
        print(f"| {r.stage} | {r.wall_s:.1f} s | {m:.1f} s | {r.wall_s / m:.2f} | {'yes' if ok else 'no'} |")
    total_p = sum(r.wall_s for r in modelled if r.stage in measured)
    total_m = sum(measured.get(r.stage, 0.0) for r in modelled)
    print(f"| total of the modelled stages | {total_p:.0f} s | {total_m:.0f} s | {total_p / total_m:.2f} | "
          f"{'yes' if abs(total_p / total_m - 1) <= 0.3 else 'no'} |")
    print(f"{within} of {sum(r.stage in measured for r in modelled)} modelled stages within 30%")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
