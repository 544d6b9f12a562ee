"""What a person opens to check a stage in the Prefect UI: per-stage pictures as markdown with small PNG data URIs
(they render offline; see ``idtprior.evaluation.figures.markdown_image``), built from what the stage STORED.

One function per stage returns its markdown; each reads a few seeded videos only (``pick_videos``), so it costs
seconds at any dataset size. The stage flows put it in their summary artifact (``artifact_key(ws, stage, "summary")``)
or, for the stages whose summary ``report_stage`` writes, in a ``pictures`` artifact next to it.

- decode: a frame strip of a few videos (one row each, frames spread over the video);
- detect: the stored person boxes drawn on a few frames of a few videos;
- idt: trajectories of a short window (``window_tracks``) drawn on a few videos' middle frames, and the sample's rows
  per pyramid scale (column 6 of a row);
- fit_codebook: PCA variance kept per block and the EM log-likelihood per iteration (from the record);
- encode: valid / invalid sketches and the histogram of sketch norms;
- cluster: the cluster-size histogram, the NMI / purity table and the montage of the largest clusters (middle frames
  with the IDT tracks of a short window around them);
- training (``training_markdown``): loss, learning-rate and kNN curves per epoch and the kNN table of the record.
"""

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from idtprior.evaluation.figures import (cluster_montage, draw_tracks, encode_png, line_plot, markdown_image,
                                         montage, training_curves)
from idtprior.storage import FrameStore, Workspace, read_manifest

IMAGE_BYTES = 150_000
"""Markdown characters at most per picture (a stage's artifact stays a few hundred KB)."""
CELL_SIDE = 128
"""Longest side of a montage cell: stored frames larger than this are shown smaller."""
SCALE_COLUMN = 6
"""Column of an IDT row holding the pyramid scale of its trajectory (see ``../shared/data/README.md``)."""


def pick_videos(video_ids: list[str], count: int, seed: int, what: str) -> list[str]:
    """``count`` of ``video_ids``, a seeded choice that stays the same when other videos are added (the lowest
    ``sha256(seed:what:id)``), in id order."""
    rank = sorted(video_ids, key=lambda v: hashlib.sha256(f"{seed}:{what}:{v}".encode()).hexdigest())
    return sorted(rank[:count])


def cell_for(height: int, width: int, side: int = CELL_SIDE) -> tuple[int, int]:
    """The montage cell ``(h, w)`` of a ``height x width`` frame: the frame's own size up to ``side``, else scaled
    down to it (aspect kept)."""
    scale = min(1.0, side / max(height, width, 1))
    return max(1, round(height * scale)), max(1, round(width * scale))


PNG_LEVEL = 6
"""zlib level of the pictures' PNGs: frame montages are photographs, which level 9 shrinks by a few % more in much
more time (``benchmarks/artifact_pictures.py`` on a demo workspace: the decode strip x6.6 faster at level 6, the idt
and cluster pictures x1.9 and x1.25, whose rest is IDT; 4.4 s -> 2.7 s for the three)."""


def image_md(alt: str, image: np.ndarray) -> str:
    return markdown_image(alt, encode_png(image, PNG_LEVEL), IMAGE_BYTES, PNG_LEVEL)


def table_md(header: list[str], rows: list[list]) -> str:
    return ("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
            + "".join("| " + " | ".join(str(c) for c in row) + " |\n" for row in rows))


def stage_pictures(stage: str, build: Callable[..., str], *args, **kwargs) -> str:
    """``build(*args, **kwargs)``, or a line saying why the pictures could not be made: a stage whose data is
    committed does not fail on its pictures (the warning goes to the run's log)."""
    try:
        return build(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - pictures are a view; the stage's outcome is its records
        from prefect.logging import get_run_logger

        get_run_logger().warning(f"{stage}: no pictures for the artifact: {type(e).__name__}: {e}")
        return f"_No pictures: {type(e).__name__}: {e}_\n"


class VideoFrames:
    """A clip source (``idtprior.models.ClipSource``) over ``video_ids``: the decoded frames where the decode stage
    stored them, else the source file (streamed up to the clip: only a few videos are read)."""

    def __init__(self, ws: Workspace, video_ids: list[str]):
        self.ids = list(video_ids)
        self.store = FrameStore(ws)
        self.rows = {r.video_id: r for r in read_manifest(ws)}

    def __len__(self) -> int:
        return len(self.ids)

    def num_frames(self, index: int) -> int:
        vid = self.ids[index]
        return self.store.num_frames(vid) if vid in self.store else int(self.rows[vid].frame_count)

    def read_clip(self, index: int, start: int, length: int) -> np.ndarray:
        vid = self.ids[index]
        if vid in self.store:
            return self.store.read_clip(vid, start, length)
        from idtprior.video.io import iter_frames

        clip = []
        for t, frame in enumerate(iter_frames(self.rows[vid].path)):
            if t >= start + length:
                break
            if t >= start:
                clip.append(frame)
        if len(clip) != length:
            raise ValueError(f"video {vid}: clip [{start}, {start + length}) outside its {start + len(clip)} frames")
        return np.stack(clip)


# --- decode ---------------------------------------------------------------------------------------------------------


def decode_frames(store: FrameStore, video_id: str, count: int) -> list[np.ndarray]:
    """``count`` stored frames spread evenly over the video (first and last included)."""
    n = store.num_frames(video_id)
    return [store.read_clip(video_id, int(t), 1)[0] for t in np.linspace(0, n - 1, min(n, count)).round()]


def decode_markdown(ws: Workspace, seed: int = 0, videos: int = 3, frames: int = 6) -> str:
    """A frame strip per picked video: ``frames`` stored frames spread over it."""
    store = FrameStore(ws)
    picked = pick_videos(store.video_ids, videos, seed, "decode")
    if not picked:
        return "_No decoded video._\n"
    rows = [decode_frames(store, v, frames) for v in picked]
    h, w = rows[0][0].shape[:2]
    image = montage(rows, cell=cell_for(h, w), row_labels=picked, label_width=120)
    return (f"### decoded frames\n\n{len(picked)} of {len(store.video_ids)} videos (seeded), {frames} frames each, "
            f"stored size {w}x{h}\n\n{image_md('decoded frames', image)}\n")


# --- detect ---------------------------------------------------------------------------------------------------------


def draw_boxes(frame: np.ndarray, boxes: np.ndarray, t: int) -> np.ndarray:
    """A copy of ``frame`` with person boxes ``(K, 5)`` ``[x1, y1, x2, y2, score]`` drawn in green with their score
    and the frame index ``t`` (as ``idtprior inspect WS detect`` draws them)."""
    img = np.ascontiguousarray(frame).copy()
    for x1, y1, x2, y2, score in np.asarray(boxes, np.float64).reshape(-1, 5):
        cv2.rectangle(img, (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2))), (0, 255, 0), 2)
        cv2.putText(img, f"{score:.2f}", (int(x1) + 2, int(y1) + 12), cv2.FONT_HERSHEY_PLAIN, 0.9, (255, 255, 0))
    cv2.putText(img, f"{t}", (2, img.shape[0] - 4), cv2.FONT_HERSHEY_PLAIN, 0.9, (255, 0, 0))
    return img


def boxed_frames(path: str, boxes: list[np.ndarray], count: int) -> list[np.ndarray]:
    """``count`` frames of the source video spread over its boxed frames, with their boxes drawn."""
    from idtprior.video.io import iter_frames

    picks = set(np.linspace(0, len(boxes) - 1, min(len(boxes), count)).round().astype(int).tolist())
    out = []
    for t, frame in enumerate(iter_frames(path)):
        if t > max(picks, default=-1):
            break
        if t in picks:
            out.append(draw_boxes(frame, boxes[t], t))
    return out


def detect_markdown(ws: Workspace, seed: int = 0, videos: int = 3, frames: int = 4) -> str:
    """The stored person boxes of a few picked videos drawn on ``frames`` frames each."""
    from idtprior.tasks.detect import read_video_boxes

    done = sorted(v for rec in ws.records("detect").values() for v, i in rec.videos.items() if i.get("status") == "ok")
    picked = pick_videos(done, videos, seed, "detect")
    if not picked:
        return "_No video with boxes._\n"
    paths = {r.video_id: r.path for r in read_manifest(ws)}
    rows, labels, counts = [], [], []
    for v in picked:
        boxes = read_video_boxes(ws, v)
        drawn = boxed_frames(paths[v], boxes, frames)
        if drawn:
            rows.append(drawn)
            labels.append(v)
            counts.append([v, len(boxes), sum(1 for b in boxes if len(b)), sum(len(b) for b in boxes)])
    if not rows:
        return "_No frame with boxes._\n"
    h, w = rows[0][0].shape[:2]
    image = montage(rows, cell=cell_for(h, w), row_labels=labels, label_width=120)
    return ("### person boxes\n\n" + table_md(["video", "frames", "frames with a person", "boxes"], counts)
            + f"\n{image_md('person boxes', image)}\n")


# --- idt ------------------------------------------------------------------------------------------------------------


def window_tracks(source, index: int, params, frame: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The trajectories that end at ``frame`` (default: the middle frame) of video ``index`` of a clip source: IDT
    (``extract_idt``) over the ``track_length + 1`` frames ending there only. Returns the frame ``(H, W, 3)`` and the
    points ``(n, L + 1, 2)`` in its pixels (``n = 0`` when the video is shorter than the window)."""
    from idtprior.video.idt import extract_idt

    n = source.num_frames(index)
    mid = n // 2 if frame is None else frame
    start = max(0, mid - params.track_length)
    clip = np.asarray(source.read_clip(index, start, mid - start + 1))
    rows, points = extract_idt(iter(clip), params, return_points=True)
    ending = rows[:, 0].astype(np.int64) == mid - start if len(rows) else np.zeros(0, bool)
    return clip[-1], points[ending]


def drawing_params(idt_config):
    """The IDT parameters of the pictures: the stage's, at the original scale only (the tracks drawn on a small cell;
    the coarser scales' would cost as much again for a few more lines)."""
    from idtprior.tasks.idt import idt_params

    return dataclasses.replace(idt_params(idt_config), scale_num=1)


def scale_counts(rows: np.ndarray) -> dict[float, int]:
    """Rows per pyramid scale (column ``SCALE_COLUMN`` of IDT rows ``(n, 436)``), scale ascending."""
    scales, counts = np.unique(np.round(np.asarray(rows)[:, SCALE_COLUMN].astype(np.float64), 4), return_counts=True)
    return {float(s): int(c) for s, c in zip(scales, counts)}


def idt_markdown(ws: Workspace, idt_config, seed: int = 0, videos: int = 3) -> str:
    """The IDT sample's rows per pyramid scale, and trajectories (a window ending at the middle frame) drawn on a few
    picked sample videos."""
    from idtprior.tasks.idt import read_sample

    rows = read_sample(ws)
    counts = scale_counts(rows)
    md = (f"### IDT sample\n\n{len(rows)} rows; per pyramid scale:\n\n"
          + table_md(["scale", "rows"], [[f"{s:g}", c] for s, c in counts.items()]))
    sampled = sorted(v for rec in ws.records("idt").values() for v, i in rec.videos.items()
                     if i.get("status") == "ok")
    picked = pick_videos(sampled, videos, seed, "idt")
    if not picked:
        return md
    source = VideoFrames(ws, picked)
    params = drawing_params(idt_config)
    drawn, labels = [], []
    for i, v in enumerate(picked):
        frame, points = window_tracks(source, i, params)
        drawn.append(draw_tracks(frame, points))
        labels.append(f"{v}: {len(points)} tracks")
    h, w = drawn[0].shape[:2]
    image = montage([[im] for im in drawn], cell=cell_for(2 * h, 2 * w, 2 * CELL_SIDE), row_labels=labels,
                    label_width=160)
    return (md + f"\nTrajectories of the {params.track_length + 1} frames ending at the middle frame (scale 1):"
            f"\n\n{image_md('IDT trajectories', image)}\n")


# --- fit_codebook ---------------------------------------------------------------------------------------------------


def fit_codebook_markdown(ws: Workspace) -> str:
    """PCA variance kept per block and the EM log-likelihood per iteration, from the codebook's record."""
    rec = ws.read_record("fit_codebook", "all")
    fit = (rec.videos.get("codebook", {}).get("fit") if rec else None) or []
    if not fit:
        return "_The codebook's record has no fit report (fitted by an earlier version)._\n"
    table = table_md(["block", "columns", "PCA dims", "variance kept", "EM iterations", "converged",
                      "final log-likelihood"],
                     [[i, f"{b['columns'][0]}:{b['columns'][1]}", b["pca_dim"], f"{b['pca_variance_kept']:.4f}",
                       len(b["log_likelihood"]), b["converged"],
                       f"{b['log_likelihood'][-1]:.4f}" if b["log_likelihood"] else "-"] for i, b in enumerate(fit)])
    series = {f"block {i}": b["log_likelihood"] for i, b in enumerate(fit) if b["log_likelihood"]}
    md = f"### codebook fit\n\n{table}"
    if series:
        xs = list(range(1, max(len(v) for v in series.values()) + 1))
        md += f"\n{image_md('EM log-likelihood per iteration', line_plot(series, 'EM log-likelihood', x=xs))}\n"
    return md


# --- encode ---------------------------------------------------------------------------------------------------------


def histogram_plot(values: np.ndarray, title: str, bins: int = 20) -> np.ndarray:
    """A line plot of the histogram of ``values`` (counts against bin centres)."""
    counts, edges = np.histogram(np.asarray(values, np.float64), bins=bins)
    return line_plot({"count": counts.tolist()}, title, x=((edges[:-1] + edges[1:]) / 2).tolist())


def encode_markdown(ws: Workspace) -> str:
    """Valid / invalid sketch counts and the histogram of the valid sketches' L2 norms."""
    from idtprior.tasks.encode import read_assembled_sketches

    x, valid, ids = read_assembled_sketches(ws)
    norms = np.linalg.norm(x[valid].astype(np.float64), axis=1)
    md = "### sketches\n\n" + table_md(["videos", "valid", "invalid", "dim", "norm min", "norm median", "norm max"], [[
        len(ids), int(valid.sum()), int((~valid).sum()), x.shape[1],
        *([f"{norms.min():.4f}", f"{np.median(norms):.4f}", f"{norms.max():.4f}"] if len(norms) else ["-"] * 3)]])
    if len(norms):
        md += f"\n{image_md('sketch norms', histogram_plot(norms, 'sketch L2 norm'))}\n"
    return md


# --- cluster --------------------------------------------------------------------------------------------------------


def montage_tracks(source, members: list[int], params) -> dict[int, np.ndarray]:
    """Video index -> the points of the trajectories ending at its middle frame (``window_tracks``)."""
    return {i: window_tracks(source, i, params)[1] for i in members}


def cluster_figure(ws: Workspace, video_ids: list[str], assignments: np.ndarray, idt_config=None, seed: int = 0,
                   n_clusters: int = 6, per_cluster: int = 4, labels: list[str] | None = None) -> np.ndarray:
    """The montage of the ``n_clusters`` largest clusters of ``assignments (N,)`` over ``video_ids``: ``per_cluster``
    members' middle frames each (seeded), with the IDT tracks of a window ending there when ``idt_config`` is given."""
    from idtprior.evaluation.figures import largest_clusters

    source = VideoFrames(ws, video_ids)
    tracks = None
    if idt_config is not None:
        members = [int(i) for _, m in largest_clusters(assignments, n_clusters, per_cluster, seed) for i in m]
        tracks = montage_tracks(source, members, drawing_params(idt_config))
    first = int(np.flatnonzero(np.asarray(assignments) >= 0)[0])
    h, w = source.read_clip(first, 0, 1).shape[1:3]
    return cluster_montage(source, assignments, n_clusters, per_cluster, seed, cell_for(h, w), tracks=tracks,
                           labels=labels)


def size_histogram(assignments: np.ndarray) -> np.ndarray:
    """Cluster sizes, largest first, as a line plot (size against rank)."""
    sizes = np.sort(np.bincount(np.asarray(assignments)[np.asarray(assignments) >= 0]))[::-1]
    return line_plot({"videos": sizes.tolist()}, "cluster size by rank", x=list(range(1, len(sizes) + 1)))


def cluster_markdown(ws: Workspace, idt_config=None, seed: int = 0, stats: dict | None = None,
                     n_clusters: int = 6, per_cluster: int = 4) -> str:
    """Run 0 of the clustering: the size histogram, the NMI / purity table (``stats``, as the stage computes it) and
    the montage of the largest clusters with their IDT tracks (``idt_config``; None: frames only)."""
    from idtprior.tasks.encode import read_cluster_labels

    labels, ids = read_cluster_labels(ws)
    run = labels[0]
    truth = {r.video_id: r.label for r in read_manifest(ws)}
    md = "### clusters (run 0)\n\n"
    agreement = {k: (stats or {})[k] for k in ("nmi", "purity", "close_pairs", "close_precision", "same_label_pairs")
                 if k in (stats or {})}
    if agreement:
        md += table_md(list(agreement), [list(agreement.values())]) + "\n"
    md += image_md("cluster sizes", size_histogram(run)) + "\n\n"
    image = cluster_figure(ws, ids, run, idt_config, seed, n_clusters, per_cluster,
                           labels=[truth.get(v) or "-" for v in ids] if any(truth.values()) else None)
    what = "with the IDT tracks ending at it" if idt_config is not None else ""
    md += (f"The {min(n_clusters, len(set(run[run >= 0].tolist())))} largest clusters, {per_cluster} member videos "
           f"each (seeded), middle frame {what}:\n\n{image_md('cluster montage', image)}\n")
    return md


# --- training -------------------------------------------------------------------------------------------------------


def knn_table(info: dict) -> str:
    """The kNN accuracy per label column of a training record's model info: after training, at random init."""
    sets = sorted(info.get("knn", {}))
    if not sets:
        return "_No kNN result._\n"
    rows = [["after training", *(f"{info['knn'][s]:.3f}" for s in sets)]]
    if "knn_init" in info:
        rows.append(["random init", *(f"{info['knn_init'].get(s, float('nan')):.3f}" for s in sets)])
    return table_md(["network", *sets], rows)


def training_images(ws: Workspace, stage: str) -> tuple[dict, dict[str, bytes]]:
    """A training stage's record info and its curves' PNGs (``training_curves`` of the run's epoch rows)."""
    from idtprior.tasks.pretrain import epoch_rows

    rec = ws.read_record(stage, "all")
    if rec is None or "model" not in rec.videos:
        return {}, {}
    info = rec.videos["model"]
    run_dir = Path(info.get("run_dir", ""))
    return info, training_curves(epoch_rows(run_dir)) if run_dir.is_dir() else {}


def training_markdown(ws: Workspace, stage: str) -> str:
    """Loss, learning-rate and kNN curves per epoch of a training stage (its run's csv logs) and its kNN table."""
    info, curves = training_images(ws, stage)
    if not info:
        return f"_No record of {stage}._\n"
    md = f"### {stage}: kNN accuracy\n\n{knn_table(info)}\n"
    for name, png in curves.items():
        md += markdown_image(f"{stage} {name}", png, IMAGE_BYTES) + "\n"
    return md
