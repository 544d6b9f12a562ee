"""The stages' pictures at PNG level 6 (``stages.pictures.PNG_LEVEL``) against level 9, in one run: the time to build
each stage's picture markdown (montage, PNG, the size cap's re-encodes) and its characters.

    python benchmarks/artifact_pictures.py WORKSPACE      # a workspace the demo ran in (benchmarks/plan_check.py --keep)
    python benchmarks/artifact_pictures.py                # a frame montage of the generated pan only

Best of 3 each, levels interleaved. The pictures' pixels are the same at both levels (PNG is lossless); only the size
cap can downsize one more or less.
"""

import math
import sys
import time
from pathlib import Path

from idtprior.stages import pictures
from idtprior.stages.cluster import cluster_markdown
from idtprior.stages.decode import decode_markdown
from idtprior.stages.idt import idt_markdown
from idtprior.stages.pictures import image_md


def best(fn, repeats: int = 3) -> tuple[float, str]:
    t, out = math.inf, ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return t, out


def builders(workspace: str | None) -> dict:
    if workspace is None:
        from idtprior.datasets.synthetic import textured_pan_video
        from idtprior.evaluation.figures import montage

        rows = [list(textured_pan_video(6, 128, 170, seed=s)) for s in range(3)]
        image = montage(rows, cell=(128, 170), row_labels=["a", "b", "c"], label_width=120)
        return {"frame montage (3 x 6 generated frames)": lambda: image_md("frames", image)}
    from idtprior.config import load_config
    from idtprior.storage import Workspace

    ws = Workspace(workspace)
    cfg = load_config(str(Path(workspace) / "config.yaml"))  # the config it last ran with
    return {"decode": lambda: decode_markdown(ws), "idt": lambda: idt_markdown(ws, cfg.idt),
            "cluster": lambda: cluster_markdown(ws, cfg.idt)}


def main() -> int:
    workspace = sys.argv[1] if len(sys.argv) > 1 else None
    total = {6: 0.0, 9: 0.0}
    for name, build in builders(workspace).items():
        got = {9: (math.inf, ""), 6: (math.inf, "")}  # level -> (seconds, markdown), best over the interleaved runs
        for level in (9, 6, 9, 6):
            pictures.PNG_LEVEL = level
            got[level] = min(got[level], best(build), key=lambda r: r[0])
        for level in (6, 9):
            total[level] += got[level][0]
        print(f"{name}: level 9 {got[9][0] * 1e3:.0f} ms ({len(got[9][1])} characters), level 6 "
              f"{got[6][0] * 1e3:.0f} ms ({len(got[6][1])} characters): x{got[9][0] / got[6][0]:.2f} faster")
    print(f"all: level 9 {total[9]:.2f} s, level 6 {total[6]:.2f} s: x{total[9] / total[6]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
