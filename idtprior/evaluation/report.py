"""Markdown tables of the evaluate stage's results: the paper's Table 1 (finetuning accuracy per network and clip
length, with % of the supervised network), Table 2 (few-shot linear probe, mean ± std), the kNN / NMI / purity table
per label column, and paired exact McNemar tests between consecutive networks of the method's order.

Pure functions of the RESULT dicts (``idtprior.stages.evaluate.task.read_evaluation``): no Prefect, no workspace.
"""

import math
from collections.abc import Iterable
from itertools import pairwise

import numpy as np

from idtprior.evaluation.metrics import mcnemar_exact

NETWORK_ORDER = ("scratch", "pretrain_ir", "pretrain_la_bank", "pretrain_la", "tune_joint", "supervised")
"""Rows in the paper's order; networks not named here follow, sorted."""
PAIRED_ORDER = ("scratch", "pretrain_ir", "pretrain_la_bank", "pretrain_la", "tune_joint")
"""McNemar tests compare each network with the previous one present in this order."""
PAIRED_SHOTS = "5"


def _network_key(name: str) -> tuple[int, str]:
    return (NETWORK_ORDER.index(name) if name in NETWORK_ORDER else len(NETWORK_ORDER), name)


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _of(results: Iterable[dict], protocol: str) -> list[dict]:
    return sorted((r for r in results if r.get("protocol") == protocol),
                  key=lambda r: (r["label_column"], _network_key(r["network"]), r["clip_length"]))


def finetune_table(results: Iterable[dict]) -> str:
    """Table 1: test accuracy (%) per network (rows) and clip length (columns), one table per label column; with a
    ``supervised`` row, each cell also says its % of the supervised accuracy at that clip length."""
    rows = _of(results, "finetune")
    out = []
    for column in sorted({r["label_column"] for r in rows}):
        mine = [r for r in rows if r["label_column"] == column]
        lengths = sorted({r["clip_length"] for r in mine})
        acc = {(r["network"], r["clip_length"]): r["accuracy"] for r in mine}
        supervised = {n: acc[("supervised", n)] for n in lengths if ("supervised", n) in acc}
        lines = [f"**Table 1: finetuning accuracy (%), label `{column}`**", "",
                 "| network | " + " | ".join(f"{n} frames" for n in lengths) + " |",
                 "|---|" + "---|" * len(lengths)]
        for network in sorted({r["network"] for r in mine}, key=_network_key):
            cells = []
            for n in lengths:
                a = acc.get((network, n))
                cell = _pct(a)
                if a is not None and supervised.get(n) and network != "supervised":
                    cell += f" ({100 * a / supervised[n]:.0f}% of supervised)"
                cells.append(cell)
            lines.append(f"| {network} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def few_shot_table_md(results: Iterable[dict]) -> str:
    """Table 2: few-shot linear probe accuracy (%), mean ± std over the seeded draws, per network, clip length and
    mode (rows) and shots per class (columns)."""
    rows = _of(results, "probe")
    if not rows:
        return ""
    shots = []
    for r in rows:
        for t in r["table"]:
            if t["shots"] not in shots:
                shots.append(t["shots"])
    shots.sort(key=lambda s: (s == "all", s if s != "all" else 0))
    lines = ["**Table 2: few-shot linear probe accuracy (%), mean ± std**", "",
             "| network | label | frames | mode | " + " | ".join(f"{s} per class" if s != "all" else "all"
                                                          for s in shots) + " |",
             "|---|---|---|---|" + "---|" * len(shots)]
    for r in rows:
        for mode in dict.fromkeys(t["mode"] for t in r["table"]):
            cell = {t["shots"]: t for t in r["table"] if t["mode"] == mode}
            lines.append(f"| {r['network']} | {r['label_column']} | {r['clip_length']} | {mode} | " + " | ".join(
                f"{_pct(cell[s]['mean'])} ± {_pct(cell[s]['std'])}" if s in cell else "–" for s in shots) + " |")
    return "\n".join(lines)


def knn_table(results: Iterable[dict]) -> str:
    """kNN accuracy, and NMI / purity of the network's own K-means, per label column (columns), per network and
    clip length (rows)."""
    rows = _of(results, "knn")
    if not rows:
        return ""
    columns = sorted({c for r in rows for c in r["knn"]})
    lines = ["**kNN accuracy (%) / NMI / purity of the network's K-means, per label column**", "",
             "| network | frames | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for r in rows:
        cells = [f"{_pct(r['knn'][c])} / {r['nmi'][c]:.3f} / {r['purity'][c]:.3f}" if c in r["knn"] else "–"
                 for c in columns]
        lines.append(f"| {r['network']} | {r['clip_length']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_tests(results: Iterable[dict]) -> list[dict]:
    """Exact McNemar tests between consecutive networks present in ``PAIRED_ORDER``, on the finetuning correctness
    and the 5-shot ("first") probe correctness, per label column and clip length, over the test videos both scored:
    ``{"what", "label_column", "clip_length", "a", "b", "videos", "only_a", "only_b", "p_value"}``."""
    results = list(results)
    maps: dict[tuple[str, str, int], dict[str, dict[str, bool]]] = {}
    for r in results:
        if r["network"] not in PAIRED_ORDER:
            continue
        if r["protocol"] == "finetune":
            what, correct = "finetune", r["correct"]
        elif r["protocol"] == "probe" and PAIRED_SHOTS in r.get("correct", {}):
            what, correct = f"probe {PAIRED_SHOTS}-shot", r["correct"][PAIRED_SHOTS]
        else:
            continue
        maps.setdefault((what, r["label_column"], r["clip_length"]), {})[r["network"]] = correct
    out = []
    for (what, column, length), by_network in sorted(maps.items()):
        present = [n for n in PAIRED_ORDER if n in by_network]
        for a, b in pairwise(present):
            ids = sorted(set(by_network[a]) & set(by_network[b]))
            ca = np.array([by_network[a][v] for v in ids], dtype=bool)
            cb = np.array([by_network[b][v] for v in ids], dtype=bool)
            test = mcnemar_exact(ca, cb)
            out.append({"what": what, "label_column": column, "clip_length": length, "a": a, "b": b,
                        "videos": len(ids), "only_a": test.only_a, "only_b": test.only_b, "p_value": test.p_value})
    return out


def mcnemar_table(results: Iterable[dict]) -> str:
    tests = paired_tests(results)
    if not tests:
        return ""
    lines = ["**Paired exact McNemar tests (consecutive networks)**", "",
             "| evaluation | label | frames | a | b | videos | only a right | only b right | p |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {t['what']} | {t['label_column']} | {t['clip_length']} | {t['a']} | {t['b']} | {t['videos']} | "
              f"{t['only_a']} | {t['only_b']} | {t['p_value']:.4g} |" for t in tests]
    return "\n".join(lines)


def evaluation_tables(results: Iterable[dict]) -> str:
    """The evaluate stage's report in markdown: Table 1, Table 2, the kNN / NMI / purity table and the McNemar tests
    (sections without results are left out)."""
    results = [r for r in results if r.get("status") == "ok"]
    parts = [finetune_table(results), few_shot_table_md(results), knn_table(results), mcnemar_table(results)]
    body = "\n\n".join(p for p in parts if p)
    return "## evaluate\n\n" + (body or "no evaluation results") + "\n"
