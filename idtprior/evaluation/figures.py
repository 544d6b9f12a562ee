"""Pictures of an evaluation as small PNGs that render in the Prefect UI offline (data URIs in markdown).

- cluster montages (the paper's Figures 2 and 3): a grid with one row per large cluster, each cell the middle frame of
  a member video, with its IDT tracks drawn for the IDT clustering;
- training curves (loss, learning rate, kNN accuracy per epoch) as line plots drawn with OpenCV (matplotlib is not a
  dependency of the project);
- ``png_data_uri`` / ``markdown_image``: the PNG inlined, downsized until the markdown stays under a size limit.

Images are RGB ``(H, W, 3)`` uint8 throughout; only :func:`encode_png` / :func:`decode_png` speak OpenCV's BGR.
"""

import base64
import math
from collections.abc import Callable, Mapping, Sequence

import cv2
import numpy as np

from idtprior.models.data import ClipSource

PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
)
"""Line colours (RGB) of :func:`line_plot`, in series order."""

PLOT_MARGINS = {"left": 56, "right": 10, "top": 34, "bottom": 26}
"""Pixels between the image border and :func:`line_plot`'s plot area (title and legend live in the top margin)."""


# --- PNG and data URIs --------------------------------------------------------------------------------------------


def encode_png(image: np.ndarray, compression: int = 9) -> bytes:
    """PNG bytes of an RGB ``(H, W, 3)`` or gray ``(H, W)`` uint8 image (``cv2.imencode``)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be (H, W, 3) or (H, W) uint8, got shape {image.shape} dtype {image.dtype}")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ValueError(f"cv2.imencode could not write a PNG of shape {image.shape}")
    return buf.tobytes()


def decode_png(png: bytes) -> np.ndarray:
    """The RGB ``(H, W, 3)`` uint8 image of PNG bytes."""
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{len(png)} bytes are not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def png_data_uri(png_bytes: bytes) -> str:
    """``data:image/png;base64,...`` of PNG bytes."""
    if not bytes(png_bytes[:8]) == b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"not PNG bytes (starts with {bytes(png_bytes[:8])!r})")
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def data_uri_bytes(uri: str) -> bytes:
    """The bytes inside a base64 data URI (the inverse of :func:`png_data_uri`)."""
    head, sep, body = uri.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise ValueError(f"not a base64 data URI: {uri[:40]!r}")
    return base64.b64decode(body, validate=True)


def markdown_image(alt: str, png_bytes: bytes, max_bytes: int = 200_000, compression: int = 9) -> str:
    """``![alt](data:image/png;base64,...)`` of at most ``max_bytes`` characters: an image too large is downsized
    (area interpolation, aspect kept) and encoded again at PNG ``compression`` until it fits; ``ValueError`` when
    even an 8-pixel-high version does not."""
    alt = " ".join(str(alt).replace("[", "(").replace("]", ")").split())
    overhead = len(f"![{alt}](data:image/png;base64,)")

    def fits(png: bytes) -> bool:
        return overhead + 4 * math.ceil(len(png) / 3) <= max_bytes

    png = bytes(png_bytes)
    if not fits(png):
        image = decode_png(png)
        h, w = image.shape[:2]
        scale = 1.0
        while not fits(png):
            budget = (max_bytes - overhead) * 3 / 4
            scale *= min(0.9, math.sqrt(max(budget, 1) / len(png)))
            nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
            if nh < 8 and nw < 8 or budget <= 0:
                raise ValueError(f"image {alt!r} ({w}x{h}, {len(png_bytes)} PNG bytes) does not fit {max_bytes} bytes "
                                 f"of markdown even at {nw}x{nh}")
            png = encode_png(cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA), compression)
    return f"![{alt}]({png_data_uri(png)})"


# --- cluster montages ---------------------------------------------------------------------------------------------


def middle_frame(source: ClipSource, index: int) -> np.ndarray:
    """The middle frame ``(H, W, 3)`` uint8 of video ``index``."""
    n = source.num_frames(index)
    if n < 1:
        raise ValueError(f"video {index}: {n} frames, no middle frame")
    frame = np.asarray(source.read_clip(index, n // 2, 1))
    if frame.ndim != 4 or frame.shape[0] != 1 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"video {index}: read_clip({n // 2}, 1) gave shape {frame.shape} dtype {frame.dtype}")
    return frame[0]


def draw_tracks(frame: np.ndarray, tracks: np.ndarray | Sequence[np.ndarray], scale: float = 1.0) -> np.ndarray:
    """A copy of ``frame (H, W, 3)`` with trajectories drawn as the IDT visualiser does (green polyline, brighter
    towards its end, a red dot at the last point). ``tracks``: ``(n, P, 2)`` or a list of ``(P_i, 2)`` float arrays
    of ``(x, y)`` points in pixels of the video the tracks came from; ``scale`` maps them onto ``frame``."""
    from idtprior.video.idt.render import draw_frame

    img = np.ascontiguousarray(frame).copy()
    for track in tracks:
        pts = np.asarray(track, np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"a track must be (P, 2) points, got shape {pts.shape}")
        if len(pts):
            img = draw_frame(img, pts[None] * scale)
    return img


def largest_clusters(assignments: Sequence[int] | np.ndarray, n_clusters: int = 8, per_cluster: int = 6,
                     seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """The ``n_clusters`` largest clusters of ``assignments (N,)`` (label < 0: none), largest first (ties: smaller
    label), each with up to ``per_cluster`` member indices drawn without replacement (seeded), sorted."""
    a = np.asarray(assignments)
    if a.ndim != 1:
        raise ValueError(f"cluster assignments must be (N,), got shape {a.shape}")
    labels, counts = np.unique(a[a >= 0], return_counts=True)
    order = np.lexsort((labels, -counts))[:n_clusters]
    rng = np.random.default_rng([seed, 3])
    out = []
    for k in labels[order]:
        members = np.flatnonzero(a == k)
        pick = rng.choice(members, size=min(per_cluster, len(members)), replace=False)
        out.append((int(k), np.sort(pick).astype(np.int64)))
    return out


def montage(rows: Sequence[Sequence[np.ndarray]], cell: tuple[int, int] | None = None, pad: int = 2,
            background: int = 255, row_labels: Sequence[str] | None = None, label_width: int = 96) -> np.ndarray:
    """A grid image ``(H, W, 3)`` uint8: row ``r``, column ``c`` holds ``rows[r][c]`` resized to ``cell = (h, w)``
    (default: the first image's size; same-size images are copied exactly).

    Cell ``(r, c)`` is at ``y = pad + r * (h + pad)``, ``x = L + pad + c * (w + pad)`` where ``L`` is
    ``label_width`` when ``row_labels`` are given (drawn left of each row) and 0 otherwise; so
    ``H = R * (h + pad) + pad`` and ``W = L + C * (w + pad) + pad`` for ``R`` rows and ``C`` = the longest row.
    """
    if not rows or not any(len(r) for r in rows):
        raise ValueError("montage of no images")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    first = next(np.asarray(im) for r in rows for im in r)
    h, w = (int(first.shape[0]), int(first.shape[1])) if cell is None else (int(cell[0]), int(cell[1]))
    n_cols = max(len(r) for r in rows)
    left = label_width if row_labels is not None else 0
    out = np.full((len(rows) * (h + pad) + pad, left + n_cols * (w + pad) + pad, 3), background, np.uint8)
    for r, row in enumerate(rows):
        y = pad + r * (h + pad)
        for c, im in enumerate(row):
            im = np.asarray(im)
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f"montage image ({r}, {c}): need (H, W, 3) uint8, got {im.shape} {im.dtype}")
            if im.shape[:2] != (h, w):
                im = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
            x = left + pad + c * (w + pad)
            out[y : y + h, x : x + w] = im
        if row_labels is not None:
            _put_text(out, str(row_labels[r]), (4, y + h // 2 + 4), LABEL_SCALE, (0, 0, 0), max_width=left - 8)
    return out


def cluster_montage(
    source: ClipSource, assignments: Sequence[int] | np.ndarray, n_clusters: int = 8, per_cluster: int = 6,
    seed: int = 0, cell: tuple[int, int] = (96, 96),
    tracks: Callable[[int], np.ndarray | Sequence[np.ndarray]] | Mapping[int, np.ndarray] | None = None,
    track_scale: float = 1.0, labels: Sequence | None = None, label_width: int | None = None,
) -> np.ndarray:
    """The paper's Figures 2/3: the largest clusters of ``assignments (N,)`` (indices into ``source``), one row each,
    ``per_cluster`` member videos' middle frames (seeded pick), with their IDT tracks when ``tracks`` gives them per
    video index (``(n, P, 2)`` / list of ``(P, 2)`` points, scaled by ``track_scale``). Rows are labelled with the
    cluster, its size and, given ``labels (N,)``, its most common label; ``label_width`` (None: the longest label's,
    so none is cut)."""
    a = np.asarray(assignments)
    if a.shape != (len(source),):
        raise ValueError(f"cluster assignments shape {a.shape} must be ({len(source)},), one per video")
    rows, names = [], []
    for k, members in largest_clusters(a, n_clusters, per_cluster, seed):
        frames = []
        for i in members:
            frame = middle_frame(source, int(i))
            if tracks is not None:
                t = tracks.get(int(i)) if isinstance(tracks, Mapping) else tracks(int(i))
                if t is not None:
                    frame = draw_tracks(frame, t, track_scale)
            frames.append(frame)
        rows.append(frames)
        name = f"#{k} n={int((a == k).sum())}"
        if labels is not None:
            values, counts = np.unique(np.asarray(labels, dtype=object)[a == k].astype(str), return_counts=True)
            name += f" {values[counts.argmax()]}"
        names.append(name)
    if label_width is None:
        label_width = max(96, max(label_text_width(n) for n in names) + 12)
    return montage(rows, cell=cell, row_labels=names, label_width=label_width)


LABEL_SCALE = 0.4  # the font scale of a montage's row labels


def label_text_width(text: str, scale: float = LABEL_SCALE) -> int:
    """Pixels a row label of ``montage`` takes (OpenCV's Hershey simplex font at ``scale``)."""
    return int(cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0])


# --- curves -------------------------------------------------------------------------------------------------------


def _put_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour: tuple[int, int, int],
              max_width: int | None = None) -> None:
    if max_width is not None:
        while text and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > max_width:
            text = text[:-1]
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def line_plot(series: Mapping[str, Sequence[float]], title: str = "", size: tuple[int, int] = (360, 220),
              log_y: bool = False, x: Sequence[float] | None = None) -> np.ndarray:
    """A line plot ``(H, W, 3)`` uint8 of each series against ``x`` (default 0, 1, ...: the epoch), with the y range's
    ends and the x range's ends written on the axes, and a legend. Non-finite values (and values <= 0 with
    ``log_y``) leave gaps. ``size = (W, H)``; the plot area lies :data:`PLOT_MARGINS` inside the border, lines are
    drawn without anti-aliasing in the :data:`PALETTE` colours."""
    width, height = size
    m = PLOT_MARGINS
    if width < m["left"] + m["right"] + 10 or height < m["top"] + m["bottom"] + 10:
        raise ValueError(f"plot size {size} leaves no plot area")
    img = np.full((height, width, 3), 255, np.uint8)
    x0, x1, y0, y1 = m["left"], width - 1 - m["right"], m["top"], height - 1 - m["bottom"]
    n = max((len(v) for v in series.values()), default=0)
    xs = np.arange(n, dtype=np.float64) if x is None else np.asarray(x, np.float64)
    if len(xs) < n:
        raise ValueError(f"{len(xs)} x values for series of {n} points")

    def transform(v: Sequence[float] | np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float64)
        if log_y:
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
        return np.where(np.isfinite(v), v, np.nan)

    values = {k: transform(v) for k, v in series.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] + [np.zeros(0)])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    xf = xs[:n][np.isfinite(xs[:n])]
    xlo, xhi = (float(xf.min()), float(xf.max())) if xf.size else (0.0, 1.0)
    if xhi - xlo < 1e-12:
        xlo, xhi = xlo - 0.5, xhi + 0.5

    def px(i: int, v: float) -> tuple[int, int]:
        return (int(round(x0 + (xs[i] - xlo) / (xhi - xlo) * (x1 - x0))),
                int(round(y1 - (v - lo) / (hi - lo) * (y1 - y0))))

    cv2.rectangle(img, (x0 - 4, y0 - 4), (x1 + 4, y1 + 4), (0, 0, 0), 1)
    legend_x = x0
    for i, (name, v) in enumerate(values.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = [px(j, float(v[j])) if np.isfinite(v[j]) and np.isfinite(xs[j]) else None for j in range(len(v))]
        for a, b in zip(pts, pts[1:]):
            if a is not None and b is not None:
                cv2.line(img, a, b, colour, 1, cv2.LINE_8)
        for p in pts:
            if p is not None:
                cv2.circle(img, p, 2, colour, -1, cv2.LINE_8)
        # the legend: one row in the top margin, so that no colour of it falls inside the plot area
        cv2.line(img, (legend_x, 25), (legend_x + 12, 25), colour, 2, cv2.LINE_8)
        label = name[:24]
        _put_text(img, label, (legend_x + 16, 29), 0.35, (0, 0, 0))
        legend_x += 16 + cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)[0][0] + 12

    def fmt(v: float) -> str:
        return f"{10 ** v:.3g}" if log_y else f"{v:.3g}"

    grey = (90, 90, 90)
    _put_text(img, fmt(hi), (2, y0 + 8), 0.35, grey, max_width=m["left"] - 8)
    _put_text(img, fmt(lo), (2, y1), 0.35, grey, max_width=m["left"] - 8)
    _put_text(img, f"{xlo:.3g}", (x0, y1 + 18), 0.35, grey)
    _put_text(img, f"{xhi:.3g}", (x1 - 24, y1 + 18), 0.35, grey)
    _put_text(img, title + (" (log)" if log_y else ""), (x0, 13), 0.45, (0, 0, 0), max_width=width - x0 - 4)
    return img


CURVES: dict[str, tuple[tuple[str, ...], bool]] = {
    "loss": (("loss", "val_loss"), False),
    "lr": (("lr",), True),
    "knn": (("knn_acc", "val_accuracy"), False),
}
"""The training-curve figures: name -> (history keys drawn together, log y)."""


def training_curves(history: Sequence[Mapping[str, float]], size: tuple[int, int] = (360, 220)
                    ) -> dict[str, bytes]:
    """PNG line plots of a per-epoch history (rows as :func:`idtprior.evaluation.finetune.finetune` or the
    pretraining's epoch reporter give them): one per :data:`CURVES` entry with at least one finite value."""
    out = {}
    for name, (keys, log_y) in CURVES.items():
        series = {k: [float(row.get(k, float("nan"))) for row in history] for k in keys}
        series = {k: v for k, v in series.items() if np.isfinite(v).any()}
        if series:
            xs = [float(row.get("epoch", i)) for i, row in enumerate(history)]
            out[name] = encode_png(line_plot(series, name, size, log_y, xs))
    return out
