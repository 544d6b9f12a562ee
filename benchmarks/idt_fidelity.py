"""IDT fidelity on the KTH clip against the reference release's own output: counts, matching, block cosines, overall and
per scale, plus the spread of the matched pairs' info columns. Usage: python benchmarks/idt_fidelity.py [N_FRAMES]"""

import os
import sys
from pathlib import Path

import cv2
import numpy as np

from idtprior.video.idt import IDTParams, extract_idt
from idtprior.video.idt.compare import fidelity_report, format_report, match_rows
from idtprior.video.idt.textformat import read_idt_text
from idtprior.video.io import iter_frames


def main() -> int:
    data = Path(os.environ.get("IDTPRIOR_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    kth = data / "kth"
    if not (kth / "person01_boxing_d1_uncomp.avi").exists():
        print(f"skipped: reference KTH clip not found under {kth} (set IDTPRIOR_SHARED_DATA)")
        return 0
    n = int(sys.argv[1]) if len(sys.argv) > 1 else None
    cv2.setNumThreads(1)
    frames = iter_frames(kth / "person01_boxing_d1_uncomp.avi")
    if n:
        frames = (f for _, f in zip(range(n), frames))
    ours = extract_idt(frames, IDTParams())
    ref = read_idt_text(kth / "person01_boxing_d1.idt.txt.gz")
    if n:
        ref = ref[ref[:, 0] < n]
    rep = fidelity_report(ours, ref)
    print(format_report(rep))
    pairs = match_rows(ours, ref)
    if len(pairs):
        a, b = ref[pairs[:, 0]], ours[pairs[:, 1]]
        d = np.sqrt(((a[:, 1:3] - b[:, 1:3]) ** 2).sum(1))
        print(f"matched pairs: mean-position distance median {np.median(d):.2f} px; ratios ref/ours: "
              f"std x {np.median(a[:, 3] / b[:, 3]):.3f} std y {np.median(a[:, 4] / b[:, 4]):.3f} "
              f"length {np.median(a[:, 5] / b[:, 5]):.3f}")
    floors = rep["matched"] >= 0.7 and abs(rep["count_ratio"] - 1) <= 0.15 and min(rep["cosine"].values()) >= 0.95
    print("issue 3 floor (overall):", "met" if floors else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
