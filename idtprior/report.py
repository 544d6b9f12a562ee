"""``idtprior report WORKSPACE [-o DIR]``: ``DIR/report.md`` and its PNGs, from what the workspace stored.

- the evaluate stage's tables (``idtprior.evaluation.report.evaluation_tables``: Table 1 finetuning with % of
  supervised, Table 2 few-shot probe mean ± std over its seeded draws, the kNN / NMI / purity table, paired McNemar
  tests);
- the kNN table per label column of each training stage's record (after training, at random init);
- Figures 2 and 3: montages of the largest clusters for the IDT clustering (cluster stage, run 0, with the IDT tracks
  of a window ending at each middle frame), for LA's bank clusters (K-means of ``bank.npy`` of the pretrain_la_bank
  run where there is one, else of pretrain_la's) and for the joint space (K-means of [bank | IDT sketch], as
  tune_joint clusters: ``models.clustering.cluster_joint``);
- the loss, learning-rate and kNN curves per epoch of each training stage.

A stage the workspace lacks is listed as missing. Every choice is seeded: a report of the same workspace twice writes
the same bytes.
"""

from pathlib import Path

import numpy as np

from idtprior.config.training import TRAIN_STAGES
from idtprior.storage import Workspace, read_manifest

REPORT_STAGES = ("cluster", *TRAIN_STAGES, "evaluate")
FIGURE_CLUSTERS, FIGURE_MEMBERS = 6, 4


def _png(out: Path, name: str, image_or_png) -> str:
    """Write ``out/name`` (an RGB image or PNG bytes); return the markdown that shows it."""
    from idtprior.evaluation.figures import encode_png

    data = image_or_png if isinstance(image_or_png, bytes) else encode_png(image_or_png)
    (out / name).write_bytes(data)
    return f"![{name}]({name})"


def training_stages(ws: Workspace) -> list[str]:
    """The training stages with a record in the workspace, in pipeline order."""
    return [s for s in TRAIN_STAGES if (rec := ws.read_record(s, "all")) is not None and "model" in rec.videos]


def bank_ids(ws: Workspace, stage: str, n_rows: int) -> list[str] | None:
    """The video ids of the rows of a training run's memory bank: the run's training videos (decoded ok videos in id
    order, of the train split when the run kept one), found by their count; None when no candidate has ``n_rows``."""
    rec = ws.read_record(stage, "all")
    group = ws.open_verified(stage, rec) if rec is not None and rec.version else None
    every = list(group["embeddings"].attrs["video_ids"]) if group is not None and "embeddings" in group else []
    splits = {r.video_id: r.split for r in read_manifest(ws)}
    for ids in (every, sorted(v for v in every if splits.get(v) == "train")):
        if len(ids) == n_rows:
            return ids
    return None


def bank_assignments(ws: Workspace, k: int, seed: int, joint: bool) -> tuple[np.ndarray, list[str], str] | str:
    """Run 0 of K-means of LA's memory bank (``joint``: of [bank | IDT sketch]) -> (labels (N,), ids, which bank), or
    why it cannot be made."""
    import torch

    from idtprior.models.clustering import cluster_bank, cluster_joint

    for stage in ("pretrain_la_bank", "pretrain_la"):
        rec = ws.read_record(stage, "all")
        bank_file = Path(rec.videos.get("model", {}).get("run_dir", "")) / "bank.npy" if rec else None
        if bank_file is not None and bank_file.is_file():
            break
    else:
        return "no bank.npy of pretrain_la_bank or pretrain_la"
    bank = np.load(bank_file).astype(np.float32)
    ids = bank_ids(ws, stage, len(bank))
    if ids is None:
        return f"{stage}'s bank has {len(bank)} rows: no video list of that length to align it with"
    k = max(1, min(k, len(ids)))
    if not joint:
        return cluster_bank(torch.from_numpy(bank), k, 1, seed)[0].numpy(), ids, stage
    from idtprior.stages.encode import read_assembled_sketches

    try:
        sketches, valid, sketch_ids = read_assembled_sketches(ws)
    except KeyError as e:
        return f"no IDT sketches for the joint space ({e})"
    index = {v: i for i, v in enumerate(sketch_ids)}
    rows = np.array([index.get(v, -1) for v in ids])
    x = np.where((rows >= 0)[:, None], sketches[np.maximum(rows, 0)], 0.0).astype(np.float32)
    ok = (rows >= 0) & valid[np.maximum(rows, 0)]
    labels = cluster_joint(torch.from_numpy(bank), torch.from_numpy(x), min(k, int(ok.sum())), 1, seed, valid=ok)[0]
    labels = labels.numpy().copy()
    labels[~ok] = -1  # a video without a sketch has a cluster of its own: not a figure row
    return labels, ids, stage


def figures_section(ws: Workspace, out: Path, seed: int, idt_config) -> tuple[str, list[str]]:
    """Figures 2 and 3 (montages) and the missing parts."""
    from idtprior.stages.cluster import cluster_figure

    md, missing = ["## Figures 2 and 3: the largest clusters\n"], []
    truth = {r.video_id: r.label for r in read_manifest(ws)}
    rec = ws.read_record("cluster", "all")
    k = int(rec.videos["clusters"]["k"]) if rec is not None else 0
    if rec is not None:
        from idtprior.stages.cluster import read_cluster_labels

        labels, ids = read_cluster_labels(ws)
        image = cluster_figure(ws, ids, labels[0], idt_config, seed, FIGURE_CLUSTERS, FIGURE_MEMBERS,
                               [truth.get(v) or "-" for v in ids])
        md.append(f"### IDT clusters (cluster stage, run 0, k={k}; IDT tracks of the {idt_config.track_length + 1} "
                  f"frames ending at each middle frame)\n\n{_png(out, 'clusters_idt.png', image)}\n")
    else:
        missing.append("cluster (Figure: IDT clusters)")
    for joint, name in ((False, "bank"), (True, "joint")):
        got = bank_assignments(ws, k or 8, seed, joint)
        if isinstance(got, str):
            missing.append(f"{name} clusters: {got}")
            continue
        labels, ids, stage = got
        image = cluster_figure(ws, ids, labels, None, seed, FIGURE_CLUSTERS, FIGURE_MEMBERS,
                               [truth.get(v) or "-" for v in ids])
        what = ("K-means of LA's memory bank" if not joint else
                "K-means of [bank | IDT sketch], each half L2-normalised (as tune_joint clusters)")
        md.append(f"### {name} clusters: {what}, bank of **{stage}** (k={int(labels.max()) + 1}, seed {seed})\n\n"
                  f"{_png(out, f'clusters_{name}.png', image)}\n")
    return "\n".join(md), missing


def training_section(ws: Workspace, out: Path) -> str:
    """kNN table per label column and curves of each training stage."""
    from idtprior.stages.pretrain.flow import knn_table, training_images

    md = ["## Training stages\n"]
    for stage in training_stages(ws):
        info, curves = training_images(ws, stage)
        md.append(f"### {stage}\n\n{info.get('epochs', '?')} epochs, objective {info.get('objective', '?')}"
                  + (f" / {info['cluster_source']}" if "cluster_source" in info else "")
                  + f"; kNN accuracy of its embeddings ({info.get('eval_videos', '?')} videos) per label column:\n\n"
                  + knn_table(info))
        md.extend(_png(out, f"{stage}_{name}.png", png) for name, png in curves.items())
        md.append("")
    return "\n".join(md)


def write_report(workspace: str, out: str | None = None, seed: int = 0, idt_config=None) -> Path:
    """Write ``out/report.md`` (default ``WS/artifacts/report``) and its PNGs; returns the markdown's path."""
    from idtprior.config.stages import IDTConfig
    from idtprior.evaluation.report import evaluation_tables
    from idtprior.stages.evaluate.task import read_evaluation

    ws = Workspace(workspace)
    folder = Path(out) if out else Path(ws.artifacts_dir) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # pictures of an earlier report that this one may not make
        old.unlink()
    results = read_evaluation(ws)
    figures, missing = figures_section(ws, folder, seed, idt_config or IDTConfig())
    trained = training_stages(ws)
    missing = [s for s in TRAIN_STAGES if s not in trained] + missing
    if not results:
        missing.insert(0, "evaluate (Tables 1 and 2, the kNN table)")
    parts = [f"# idtprior report: {Path(ws.url).name}\n",
             "Table 2's few-shot rows give mean ± std over the probe's seeded draws (mode random; `runs` in the "
             "record): one draw of a few examples per class cannot separate two networks. Table 1 is one finetuning "
             "run per network; the paired McNemar tests (same test videos) say where two rows differ beyond "
             "chance.\n"]
    if results:
        parts.append(evaluation_tables(results))
    parts += [training_section(ws, folder), figures]
    if missing:
        parts.append("## Missing\n\n" + "".join(f"- {m}\n" for m in missing))
    path = folder / "report.md"
    path.write_text("\n".join(parts))
    return path
