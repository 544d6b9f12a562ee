"""The evaluate stage's clip reading: the evaluation videos' frames kept in memory (``evaluate.frame_cache_mb``) or
read from the frame store by each evaluation, with and without loader worker processes (``evaluate.num_workers``).

    python benchmarks/evaluate_frames.py /path/to/demo-workspace [--network pretrain_la]

Needs a workspace where ``make demo`` (or ``idtprior demo``) has run. Times one network's finetuning and its kNN
evaluation (the frozen network's clips of every video) as the stage computes them, in this process, one way after the
other in the same run, and checks that every way gives the same results. The stage runs them inside the flow's
process, which is larger than this one, so forking loader workers costs more there than here.
"""

import argparse
import sys
import time

import yaml

from idtprior.config import PipelineConfig
from idtprior.stages.evaluate import task as evaluate_tasks
from idtprior.stages.evaluate.flow import plan_evaluate
from idtprior.storage import Workspace

WAYS = (("store, 2 loader workers (before)", 0, 2), ("store, in process", 0, 0),
        ("memory, 2 loader workers", 4096, 2), ("memory, in process (the demo now)", 4096, 0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workspace")
    ap.add_argument("--network", default="pretrain_la")
    args = ap.parse_args()
    ws = Workspace(args.workspace)
    base = PipelineConfig.model_validate(yaml.safe_load(ws.read_bytes(f"{ws.root}/config.yaml")))
    times, results = {}, {}
    for name, cache_mb, workers in WAYS:
        cfg = base.model_copy(update={"evaluate": base.evaluate.model_copy(
            update={"frame_cache_mb": cache_mb, "num_workers": workers})})
        plans = plan_evaluate(cfg, ws)
        evaluate_tasks.release_frames()
        evaluate_tasks._FEATURES.clear()
        t0 = time.perf_counter()
        out = []
        for protocol in ("finetune", "knn"):
            plan = dict(plans[evaluate_tasks.chunk_name(args.network, protocol, cfg.evaluate.clip_lengths[0])])
            plan.pop("fingerprint")
            result = evaluate_tasks.evaluate_network(ws.url, **plan)
            result.pop("seconds")
            out.append(result)
        times[name] = time.perf_counter() - t0
        results[name] = out
        print(f"{name}: {times[name]:.1f} s (finetune accuracy {out[0]['accuracy']:.3f}, kNN {out[1]['knn']})")
    evaluate_tasks.release_frames()
    same = all(r == results[WAYS[0][0]] for r in results.values())
    base_s = times[WAYS[0][0]]
    for name in times:
        print(f"  {name}: {base_s / times[name]:.2f}x the first way's speed")
    print(f"results equal in every way: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
