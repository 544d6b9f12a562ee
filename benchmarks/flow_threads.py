"""The flow process's torch threads after the pipeline's Dask cluster has started: Dask's own LocalCluster (whose
nanny writes OMP_NUM_THREADS=1 and the rest into the starting process's environment) against the pipeline's
``runtime.dask.dask_cluster`` (which leaves it alone), with the demo's network trained for a few steps in each, in one
run. Each case is a fresh process: start a 1-worker cluster, then import torch (as the training stages do), then time
SGD steps of ResNet-18 3D width 0.25, batch 16, 16x64x64 (the demo's settings).

    python benchmarks/flow_threads.py [--steps 10]
"""

import argparse
import subprocess
import sys

CASE = r"""
import json, sys, time
if __name__ == "__main__":
    if sys.argv[1] == "dask":
        from distributed import LocalCluster
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    else:
        from idtprior.config import DaskConfig
        from idtprior.runtime.dask import dask_cluster
        ctx = dask_cluster(DaskConfig(n_workers=1)); ctx.__enter__()
    import torch
    from idtprior.models.resnet3d import ResNet3d
    torch.manual_seed(0)
    m = ResNet3d("resnet18", 128, 0.25)
    x = torch.randn(16, 3, 16, 64, 64)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    def step():
        loss = m(x).pow(2).sum(); opt.zero_grad(); loss.backward(); opt.step()
    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(int(sys.argv[2])):
        step()
    print(json.dumps({"threads": torch.get_num_threads(), "s_per_step": (time.perf_counter() - t) / int(sys.argv[2])}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    import json

    out = {}
    for case in ("dask", "pipeline"):
        r = subprocess.run([sys.executable, "-c", CASE, case, str(args.steps)], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{case}: failed\n{r.stderr[-2000:]}")
        out[case] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{case:>8} cluster: torch {out[case]['threads']} thread(s), {1000 * out[case]['s_per_step']:.0f} ms a "
              f"training step")
    print(f"one-thread step / pipeline step: {out['dask']['s_per_step'] / out['pipeline']['s_per_step']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
