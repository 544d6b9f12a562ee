"""Draw trajectories over video frames, as the reference release's visualiser does: each trajectory alive at frame t is
drawn as a polyline of its points up to t (older segments darker) with a red dot at its current point."""

from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np


def draw_frame(frame: np.ndarray, tracks: np.ndarray, upto: np.ndarray | None = None, thickness: int = 1) -> np.ndarray:
    """One RGB image (H, W, 3) uint8: ``frame`` with ``tracks`` (n, P, 2) float drawn; ``upto`` (n,) int gives how
    many points of each track are visible (all when None)."""
    img = np.ascontiguousarray(frame if frame.ndim == 3 else np.repeat(frame[..., None], 3, 2)).copy()
    n, P, _ = tracks.shape
    upto = np.full(n, P) if upto is None else upto
    for track, k in zip(tracks, upto):
        if k < 1:
            continue
        pts = np.rint(track[:k]).astype(np.int32)
        for j in range(1, k):
            shade = int(80 + 175 * j / max(P - 1, 1))  # newer segments brighter
            cv2.line(img, tuple(pts[j - 1]), tuple(pts[j]), (0, shade, 0), thickness, cv2.LINE_AA)
        cv2.circle(img, tuple(pts[k - 1]), 1, (255, 0, 0), -1, cv2.LINE_AA)
    return img


def render_trajectories(
    frames: Iterable[np.ndarray], rows: np.ndarray, points: np.ndarray, track_length: int = 15
) -> Iterator[np.ndarray]:
    """Yield every frame with the trajectories passing through it drawn.

    ``rows`` (N, D) IDT rows (column 0: end frame), ``points`` (N, L+1, 2) their points in frame pixels (from
    ``extract_idt(..., return_points=True)``). Frame t shows each trajectory with end - L <= t <= end up to its point t.
    """
    end = rows[:, 0].astype(np.int64)
    start = end - track_length
    for t, frame in enumerate(frames):
        alive = (start <= t) & (t <= end)
        yield draw_frame(frame, points[alive], (t - start[alive] + 1))


def save_strip(images: Iterable[np.ndarray], path: str | Path, every: int = 15, columns: int = 6) -> int:
    """Write a PNG contact sheet of every ``every``-th image (grid with ``columns`` columns); returns tiles written."""
    tiles = [im for i, im in enumerate(images) if i % every == 0]
    if not tiles:
        raise ValueError(f"no images to put in strip {path}")
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + columns - 1) // columns
    sheet = np.zeros((rows * h, min(columns, len(tiles)) * w, 3), np.uint8)
    for i, im in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return len(tiles)


def save_animation(images: Iterable[np.ndarray], path: str | Path, fps: float = 25.0) -> int:
    """Write the images as ``.gif`` (Pillow) or a video (``.mp4`` etc., PyAV); returns the number of frames."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        frames = [Image.fromarray(im) for im in images]
        if not frames:
            raise ValueError(f"no images to write to {path}")
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
        return len(frames)
    from idtprior.video.io import write_video

    # libx264 needs even sizes
    def even(im: np.ndarray) -> np.ndarray:
        return im[: im.shape[0] // 2 * 2, : im.shape[1] // 2 * 2]

    return write_video(path, (even(im) for im in images), fps=fps)
