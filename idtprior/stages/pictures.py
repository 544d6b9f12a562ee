"""What the stages' pictures share: frames of stored videos, drawing helpers, markdown images under the UI's size
limit. Each stage's picture builder (``decode_markdown``, ``idt_markdown``, ...) is in the stage's module, and
imports this module when it runs (it imports cv2 and the figures, which import torch)."""

import hashlib
from collections.abc import Callable

import cv2
import numpy as np

from idtprior.evaluation.figures import encode_png, line_plot, markdown_image
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


MIN_CELL_SIDE = 96
"""Shortest side of a cluster montage's cell: smaller stored frames are shown larger, so a montage of 6 x 4 of them
reads (the frame strips of decode and detect show the frames at their stored size)."""


def cell_for(height: int, width: int, side: int = CELL_SIDE, least: int = 0) -> tuple[int, int]:
    """The montage cell ``(h, w)`` of a ``height x width`` frame: the frame's own size, scaled down to ``side`` on its
    longer side, or up to ``least`` on its shorter one (the cluster montage's ``MIN_CELL_SIDE``; aspect kept; never
    more than twice ``side`` long)."""
    scale = min(1.0, side / max(height, width, 1))
    if min(height, width) * scale < least:
        scale = min(least / max(min(height, width), 1), 2 * side / max(height, width, 1))
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


def scale_counts(rows: np.ndarray) -> dict[float, int]:
    """Rows per pyramid scale (column ``SCALE_COLUMN`` of IDT rows ``(n, 436)``), scale ascending."""
    scales, counts = np.unique(np.round(np.asarray(rows)[:, SCALE_COLUMN].astype(np.float64), 4), return_counts=True)
    return {float(s): int(c) for s, c in zip(scales, counts)}


def histogram_plot(values: np.ndarray, title: str, bins: int = 20) -> np.ndarray:
    """A line plot of the histogram of ``values`` (counts against bin centres)."""
    counts, edges = np.histogram(np.asarray(values, np.float64), bins=bins)
    return line_plot({"count": counts.tolist()}, title, x=((edges[:-1] + edges[1:]) / 2).tolist())


def montage_tracks(source, members: list[int], params) -> dict[int, np.ndarray]:
    """Video index -> the points of the trajectories ending at its middle frame (``window_tracks``)."""
    return {i: window_tracks(source, i, params)[1] for i in members}


def size_histogram(assignments: np.ndarray) -> np.ndarray:
    """Cluster sizes, largest first, as a line plot (size against rank)."""
    sizes = np.sort(np.bincount(np.asarray(assignments)[np.asarray(assignments) >= 0]))[::-1]
    return line_plot({"videos": sizes.tolist()}, "cluster size by rank", x=list(range(1, len(sizes) + 1)))
