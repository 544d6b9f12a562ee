"""Improved Dense Trajectories (Wang et al. IJCV 2013; Wang & Schmid ICCV 2013) over a stream of frames.

Per frame t: the frame at each spatial scale (a cascade of bilinear resizes); one coarse-to-fine Farneback pass over
the scale pyramid whose level results are the flows t-1 -> t of the scales (``flow.PyramidFlow``), median filtered
(5x5) for tracking; a homography t-1 -> t (camera motion) from keypoint and flow matches; the camera-compensated flow
(by default the raw flow minus the homography's motion; ``warp_flow="both"`` recomputes it on frame t warped back, as
the paper) for HOF, MBH, the trajectory shape and camera-motion pruning; every tracked point moved by the median flow at
its rounded position and its HOG/HOF/MBH cell histograms at frame t-1 gathered from box sums of the cell size,
normalised and added to its temporal cell's sum; new points densely sampled where no track is in the grid cell. A trajectory of L steps is pruned (static, erratic, camera-only) or becomes
one output row.

Rows (N, 10 + 2L + 33 * cells) float32, for the defaults (N, 436) with the column meaning of the reference release:
end frame, mean x, mean y, std x, std y, length, scale, x pos, y pos, t pos, shape (2L), HOG, HOF, MBHx, MBHy.
Only the frames of one step are held: memory is bounded by the number of live trajectories (each holding its points,
steps and nt_cell descriptor sums), not by the video length.
"""

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import cv2
import numpy as np

from . import camera as cam
from . import kernels
from .flow import PyramidFlow, median_flow
from .descriptors import N_CHANNELS, cell_sums, descriptor_rows, frame_channels, point_descriptors
from .params import IDTParams

PARTS = ("decode", "flow", "camera", "descriptors", "tracking", "sampling")


@dataclass
class Cohort:
    """Trajectories of one scale started at the same frame: they advance in lock step."""

    start: int
    pos: np.ndarray  # (n, L + 1, 2) float32, pixels of this scale
    comp: np.ndarray  # (n, L, 2) float32, camera-compensated displacement of each step
    desc: np.ndarray  # (n, nt_cell, cells * 33) float32, per temporal cell the sum of its frames' frame_descriptors
    alive: np.ndarray  # (n,) bool
    age: int = 0  # steps done
    # the addresses of pos, comp, desc and alive for the compiled tracking step (kernels.cohort_row): set by iter_idt,
    # which never replaces those arrays (only writes into them)
    row: tuple[int, ...] = ()


@dataclass
class _Scale:
    factor: float  # full-resolution pixels per pixel of this scale
    size: tuple[int, int]  # (h, w)
    cohorts: list[Cohort] = field(default_factory=list)
    finished: list[Cohort] = field(default_factory=list)  # ended at the current frame
    # the descriptors' per-frame buffers (h, w, 33), reused: a fresh multi-MB array each frame costs page faults
    channels: np.ndarray = field(init=False)
    sums: np.ndarray = field(init=False)
    box_work: np.ndarray = field(init=False)  # the box sums' float64 rows
    cell: int = 16  # the descriptors' cell size in pixels

    def __post_init__(self) -> None:
        self.channels = np.empty(self.size + (N_CHANNELS,), np.float32)
        self.sums = np.empty(self.size + (N_CHANNELS,), np.float32)
        self.box_work = np.empty(kernels.box_work_size(self.size[1], N_CHANNELS, self.cell), np.float64)


def pyramid_scales(height: int, width: int, params: IDTParams) -> list[tuple[float, tuple[int, int]]]:
    """(factor, (h, w)) of each spatial scale used for a ``height x width`` frame.

    Scales stop where the frame would get smaller than one descriptor patch (at 160x120 the reference keeps 4 of 8).
    """
    out = []
    factor = 1.0
    for _ in range(params.scale_num):
        h, w = int(round(height / factor)), int(round(width / factor))
        if min(h, w) < params.patch_size:
            break
        out.append((factor, (h, w)))
        factor *= params.scale_stride
    return out


def build_pyramid(gray: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """The frame at each scale: ``gray`` (h, w) uint8 is the first; each next one is the previous resized (bilinear) to
    its ``(h, w)``.

    Cascaded, not each from the full frame: on KTH every reference trajectory then starts where the min-eigenvalue
    test passes, the 1% quantile of its ratio sits at the 0.001 threshold at every scale; resizing from the full frame
    leaves 7% of the reference's starts at scale 2 below it.
    """
    out = [gray]
    for h, w in sizes[1:]:
        out.append(cv2.resize(out[-1], (w, h), interpolation=cv2.INTER_LINEAR))
    return out


def _flow_levels(h: int, w: int, params: IDTParams) -> int:
    if params.flow_levels > 0:
        return params.flow_levels
    levels, size = 1, float(min(h, w))
    while size * params.flow_pyr_scale >= params.flow_min_size:
        size *= params.flow_pyr_scale
        levels += 1
    return levels


def farneback(prev: np.ndarray, cur: np.ndarray, params: IDTParams) -> np.ndarray:
    """OpenCV's Farneback with its own pyramid: dense flow (h, w, 2) float32 from ``prev`` to ``cur`` (h, w) uint8.

    The speed baseline of the benchmarks; the extractor's flows come from ``flow.PyramidFlow`` (one pass for all
    scales), which reproduces the reference release's tracks where this per-scale call does not."""
    # cv2 takes None for the output flow (it allocates one); its stubs do not allow it
    return cv2.calcOpticalFlowFarneback(  # type: ignore[call-overload]
        prev,
        cur,
        None,
        params.flow_pyr_scale,
        _flow_levels(*cast(tuple[int, int], prev.shape), params),
        params.flow_winsize,
        params.flow_iterations,
        params.flow_poly_n,
        params.flow_poly_sigma,
        cv2.OPTFLOW_FARNEBACK_GAUSSIAN if params.flow_gaussian_window else 0,
    )


def sample_points(gray: np.ndarray, occupied: np.ndarray, params: IDTParams) -> np.ndarray:
    """Dense sampling: one point per ``W x W`` grid cell holding no live track and not in a homogeneous area.

    ``gray`` (h, w) uint8 at one scale, ``occupied`` (m, 2) positions of live tracks. A cell's candidate is its centre,
    kept when the smaller eigenvalue of its autocorrelation matrix exceeds ``quality`` times the frame's largest.
    Returns (n, 2) float32 (x, y).
    """
    h, w = gray.shape
    W = params.min_distance
    nx, ny = w // W, h // W
    if nx == 0 or ny == 0:
        return np.zeros((0, 2), np.float32)
    # the 3rd positional is cv2's dst (a number is accepted there, and replaced): ksize stays at its default, 3
    eig = cv2.cornerMinEigenVal(gray, 3, 3)  # type: ignore[call-overload]
    threshold = params.quality * float(eig.max())
    gx = np.arange(nx) * W + W // 2
    gy = np.arange(ny) * W + W // 2
    keep = eig[np.ix_(gy, gx)] > threshold  # (ny, nx)
    if len(occupied):
        ix = (occupied[:, 0] / W).astype(np.int64)
        iy = (occupied[:, 1] / W).astype(np.int64)
        ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        keep[iy[ok], ix[ok]] = False
    iy, ix = np.nonzero(keep)
    return np.stack([gx[ix], gy[iy]], 1).astype(np.float32)


def boxes_at(boxes, t: int, resize: float) -> np.ndarray | None:
    if boxes is None:
        return None
    if isinstance(boxes, Mapping):
        b = boxes.get(t)
    elif isinstance(boxes, Sequence) or isinstance(boxes, np.ndarray):
        b = boxes[t] if t < len(boxes) else None
    else:
        raise ValueError(f"boxes must be a sequence or a dict of per-frame (K, 5) arrays, got {type(boxes).__name__}")
    if b is None:
        return None
    b = np.asarray(b, np.float32).reshape(-1, np.asarray(b).shape[-1] if np.asarray(b).ndim else 5)
    if b.shape[1] < 4:
        raise ValueError(f"boxes of frame {t}: need columns x1, y1, x2, y2[, score], got shape {b.shape}")
    return b[:, :4] * resize


def to_gray(frame: np.ndarray, t: int) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"frame {t}: expected uint8, got {frame.dtype}")
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"frame {t}: expected (H, W, 3) RGB or (H, W) gray, got shape {frame.shape}")


def keep_trajectories(P: np.ndarray, C: np.ndarray, params: IDTParams) -> np.ndarray:
    """Which finished trajectories survive pruning.

    Args:
        P: (n, L + 1, 2) tracked points, full-resolution pixels.
        C: (n, L, 2) camera-compensated steps, full-resolution pixels.
    Returns:
        (n,) bool: not static (max std > ``min_var``), not wild (max std < ``max_var``), not erratic, and moving
        against the camera (largest compensated step > ``min_camera_displacement``; without compensation, any step).

    Erratic means the largest raw step exceeds BOTH ``max_dis`` pixels and ``erratic_ratio`` of the track's length.
    The ratio alone does not match the reference release's output on the KTH clip: it keeps a track whose largest step
    is 74% of its length (6.6 px, far below ``max_dis``; shape column fraction 0.739), which the ratio alone drops. No
    KTH step exceeds 11.4 px, so the clip cannot tell "both" from ``max_dis`` alone; "both" keeps the papers' 70% test.
    """
    return _keep(*_track_stats(P, C), params)


def _track_stats(P: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw step lengths (n, L), compensated step lengths (n, L) and the points' standard deviation (n, 2)."""
    dmag = np.sqrt((np.diff(P, axis=1) ** 2).sum(-1))
    cmag = np.sqrt((C**2).sum(-1))
    return dmag, cmag, P.std(1)


def _keep(dmag: np.ndarray, cmag: np.ndarray, std: np.ndarray, params: IDTParams) -> np.ndarray:
    """``keep_trajectories`` from the trajectories' ``_track_stats``."""
    largest = dmag.max(1)
    valid = std.max(1) > params.min_var
    valid &= std.max(1) < params.max_var
    valid &= ~((largest > params.max_dis) & (largest > params.erratic_ratio * dmag.sum(1)))
    if params.use_camera_compensation:
        valid &= cmag.max(1) > params.min_camera_displacement
    else:
        valid &= largest > 0
    return valid


def finalize_cohort(cohort: Cohort, factor: float, end: int, frame_hw: tuple[int, int], params: IDTParams, to_full: float):
    """Prune the finished trajectories of ``cohort`` and build their rows (n, D) float32 and points (n, L+1, 2)."""
    # measured in full-resolution pixels: the reference's static threshold (std > sqrt(3)) binds at every scale alike
    alive = np.flatnonzero(cohort.alive)
    if len(alive) == 0:
        return None
    P = cohort.pos[alive] * factor  # (n, L+1, 2)
    C = cohort.comp[alive] * factor  # (n, L, 2)
    dmag, cmag, std = _track_stats(P, C)  # raw and compensated step lengths (n, L), std (n, 2)
    valid = _keep(dmag, cmag, std, params)
    if not valid.any():
        return None
    kept = alive[valid]
    P, C, dmag, cmag, std = P[valid], C[valid], dmag[valid], cmag[valid], std[valid]
    n, L = len(P), params.track_length
    comp_length = cmag.sum(1)  # normalises the shape descriptor (its magnitudes sum to 1, as the reference's)
    mean = P.mean(1) * to_full  # full-resolution pixels of the input frames
    fh, fw = frame_hw
    rows = np.empty((n, params.descriptor_dim), np.float32)
    rows[:, 0] = end
    rows[:, 1:3] = mean
    rows[:, 3:5] = std * to_full
    # the tracked (raw) path length: the reference's column equals it (KTH median ratio 1.000, the compensated 1.006)
    rows[:, 5] = dmag.sum(1) * to_full
    rows[:, 6] = factor
    rows[:, 7] = np.clip(mean[:, 0] / fw, 0.0, 0.999)
    rows[:, 8] = np.clip(mean[:, 1] / fh, 0.0, 0.999)
    rows[:, 9] = np.nan  # t pos: needs the frame count, filled by the caller
    rows[:, 10 : 10 + 2 * L] = (C / np.maximum(comp_length, 1e-10)[:, None, None]).reshape(n, -1)
    rows[:, 10 + 2 * L :] = descriptor_rows(cohort.desc[kept], L // params.nt_cell)
    return rows, (P * to_full).astype(np.float32)


def _cohort_table(cohorts: list[Cohort]) -> np.ndarray:
    """The compiled tracking step's table of ``cohorts`` (k, 6) int64: each one's array addresses, n and age."""
    return np.array([c.row + (len(c.pos), c.age) for c in cohorts], np.int64).reshape(len(cohorts), 6)


def iter_idt(
    frames: Iterable[np.ndarray],
    params: IDTParams = IDTParams(),
    boxes: Sequence[np.ndarray] | Mapping[int, np.ndarray] | None = None,
    *,
    num_frames: int | None = None,
    return_points: bool = False,
    timings: dict[str, float] | None = None,
) -> Iterator[np.ndarray] | Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield blocks of IDT rows ``(n, 436)`` float32 as trajectories finish, streaming over ``frames``.

    ``frames``: iterable of (H, W, 3) uint8 RGB (or (H, W) gray) frames, consumed once. ``boxes``: per-frame person
    boxes, a sequence indexed by frame or a dict frame -> (K, 5) float32 [x1, y1, x2, y2, score] in input pixels;
    matches inside them are not used for the camera homography. ``num_frames`` fills the t-pos column
    ((end - L/2) / num_frames, clipped to [0, 0.999]); when None it is taken from ``len(frames)`` if there is one,
    else left NaN (``extract_idt`` fills it). ``return_points`` yields ``(rows, points)`` with the trajectory points
    (n, L+1, 2) float32 in input pixels. ``timings``, when given, accumulates seconds per part of ``PARTS``.
    """
    if num_frames is None and hasattr(frames, "__len__"):
        num_frames = len(frames)  # type: ignore[arg-type]
    L = params.track_length
    per_cell = L // params.nt_cell  # frames per temporal cell of the descriptors
    cells = params.nxy_cell * params.nxy_cell
    tm = timings if timings is not None else {}
    for p in PARTS:
        tm.setdefault(p, 0.0)
    detector = cam.make_detector(params) if params.use_camera_compensation else None
    scales: list[_Scale] = []
    prev_pyr: list[np.ndarray] = []
    prev_exp: list[np.ndarray] = []  # polynomial expansion of the previous frame's flow levels
    flow_pyr: PyramidFlow | None = None
    prev_kp = None
    frame_hw = None
    to_full = 1.0
    it = iter(frames)
    t = -1
    while True:
        t0 = time.perf_counter()
        try:
            frame = next(it)
        except StopIteration:
            break
        t += 1
        gray = to_gray(frame, t)
        tm["decode"] += time.perf_counter() - t0
        if frame_hw is None:
            frame_hw = gray.shape
            if params.max_side and max(frame_hw) > params.max_side:
                to_full = max(frame_hw) / params.max_side
            work_hw = (int(round(frame_hw[0] / to_full)), int(round(frame_hw[1] / to_full)))
            cell = params.patch_size // params.nxy_cell
            scales = [_Scale(f, s, cell=cell) for f, s in pyramid_scales(*work_hw, params)]
            if scales:
                flow_pyr = PyramidFlow([s.size for s in scales], [s.factor for s in scales], params)
        elif gray.shape != frame_hw:
            raise ValueError(f"frame {t}: size {gray.shape} differs from the first frame's {frame_hw}")
        if not scales:
            continue  # frame smaller than one patch: no scale, no trajectory
        if to_full != 1.0:
            gray = cv2.resize(gray, (scales[0].size[1], scales[0].size[0]), interpolation=cv2.INTER_AREA)
        pyr = build_pyramid(gray, [s.size for s in scales])
        t1 = time.perf_counter()
        cur_exp = flow_pyr.expand(gray)  # type: ignore[union-attr]
        tm["flow"] += time.perf_counter() - t1

        if t > 0:
            t1 = time.perf_counter()
            raw_first = not params.use_camera_compensation or params.warp_flow in ("both", "subtract")
            if raw_first:
                # raw flow of every scale, and its median filter (robust to outliers at motion edges) for tracking
                flows, med = flow_pyr.flows(prev_exp, cur_exp)  # type: ignore[union-attr]
            t2 = time.perf_counter()
            tm["flow"] += t2 - t1
            if params.use_camera_compensation:
                kp = cam.detect(detector, pyr[0])
                if prev_kp is not None:
                    src, dst = cam.match_keypoints(prev_kp, kp, params.match_ratio)
                else:
                    src = dst = np.zeros((0, 2), np.float32)
                if raw_first:
                    fs, fd = cam.flow_matches(prev_pyr[0], med[0], params)
                else:
                    fs, fd = cam.lk_matches(prev_pyr[0], pyr[0], params)
                H, _ = cam.estimate_homography(
                    np.concatenate([src, fs]),
                    np.concatenate([dst, fd]),
                    params,
                    boxes_at(boxes, t - 1, 1.0 / to_full),
                    boxes_at(boxes, t, 1.0 / to_full),
                )
                prev_kp = kp
                t3 = time.perf_counter()
                tm["camera"] += t3 - t2
                hflow = [cam.homography_flow(cam.scaled_homography(H, s.factor), *s.size) for s in scales]
                if params.warp_flow == "subtract":
                    comp = [f - hf for f, hf in zip(flows, hflow)]
                else:
                    h0, w0 = scales[0].size
                    warped = cv2.warpPerspective(pyr[0], H, (w0, h0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
                    comp, comp_med = flow_pyr.flows(prev_exp, flow_pyr.expand(warped))  # type: ignore[union-attr]
                    if not raw_first:
                        # one Farneback pass: the tracking flow is the compensated flow plus the camera's own motion
                        med = [median_flow(c + hf, params) for c, hf in zip(comp, hflow)]
                tm["flow"] += time.perf_counter() - t3
            else:
                comp = flows
            if not params.use_camera_compensation or params.warp_flow == "subtract":
                comp_med = [median_flow(f, params) for f in comp]

            out_rows, out_pts = [], []
            for i, sc in enumerate(scales):
                if not sc.cohorts:
                    continue
                t4 = time.perf_counter()
                channels = frame_channels(prev_pyr[i], comp[i], params.hof_zero_threshold, comp_med[i], sc.channels)
                sums = cell_sums(channels, sc.cell, sc.sums, sc.box_work)
                table = _cohort_table(sc.cohorts)
                pts = kernels.cohort_points(table, L)  # (m, 2) positions at t-1, live or not
                desc = point_descriptors(sums, pts, params.patch_size, params.nxy_cell)
                t5 = time.perf_counter()
                tm["descriptors"] += t5 - t4
                # every point moved by the median flow at its rounded position, its compensated step and descriptors
                # stored, and kept alive while inside the frame: one compiled loop over the scale's cohorts
                counts = kernels.track_step(med[i], comp_med[i], desc, table, L, params.nt_cell, per_cell)
                live = []
                sc.finished = []
                for c, n_alive in zip(sc.cohorts, counts.tolist()):
                    c.age += 1
                    if c.age == L:
                        sc.finished.append(c)
                        res = finalize_cohort(c, sc.factor, t, frame_hw, params, to_full)
                        if res is not None:
                            out_rows.append(res[0])
                            out_pts.append(res[1])
                    elif n_alive:
                        live.append(c)
                sc.cohorts = live
                tm["tracking"] += time.perf_counter() - t5
            if out_rows:
                rows = np.concatenate(out_rows)
                if num_frames:
                    rows[:, 9] = np.clip((rows[:, 0] - L / 2) / num_frames, 0.0, 0.999)
                yield (rows, np.concatenate(out_pts)) if return_points else rows

        if t % params.init_gap == 0:
            t6 = time.perf_counter()
            for i, sc in enumerate(scales):
                # trajectories ending at this frame free their cell at once (holding it one more frame matched the
                # reference worse on KTH: 0.44 vs 0.57 of trajectories matched with the flow of that time)
                occ = kernels.cohort_points(_cohort_table(sc.cohorts), L, only_alive=True)
                sc.finished = []
                new = sample_points(pyr[i], occ, params)
                if len(new):
                    n = len(new)
                    pos = np.zeros((n, L + 1, 2), np.float32)
                    pos[:, 0] = new
                    c = Cohort(
                        start=t,
                        pos=pos,
                        comp=np.zeros((n, L, 2), np.float32),
                        desc=np.zeros((n, params.nt_cell, cells * N_CHANNELS), np.float32),
                        alive=np.ones(n, bool),
                    )
                    c.row = kernels.cohort_row(c.pos, c.comp, c.desc, c.alive)
                    sc.cohorts.append(c)
            tm["sampling"] += time.perf_counter() - t6
        if t == 0 and params.use_camera_compensation:
            prev_kp = cam.detect(detector, pyr[0])
        prev_pyr = pyr
        prev_exp = cur_exp


def extract_idt(
    frames: Iterable[np.ndarray],
    params: IDTParams = IDTParams(),
    boxes: Sequence[np.ndarray] | Mapping[int, np.ndarray] | None = None,
    *,
    return_points: bool = False,
    timings: dict[str, float] | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """All IDT rows of a video: ``(N, 436)`` float32 (``(0, 436)`` for a video shorter than L + 1 frames or with no
    surviving trajectory), and with ``return_points`` also the points ``(N, L + 1, 2)`` float32 in input pixels.

    Streams ``frames`` (see ``iter_idt``); only the rows are collected, so the t-pos column is filled from the number
    of frames actually read.
    """
    counter = _Counter(frames)
    blocks = cast(list[tuple[np.ndarray, np.ndarray]],  # return_points=True: (rows, points) blocks
                  list(iter_idt(counter, params, boxes, num_frames=None, return_points=True, timings=timings)))
    L = params.track_length
    if blocks:
        rows = np.concatenate([b[0] for b in blocks])
        pts = np.concatenate([b[1] for b in blocks])
    else:
        rows = np.zeros((0, params.descriptor_dim), np.float32)
        pts = np.zeros((0, L + 1, 2), np.float32)
    if len(rows):
        rows[:, 9] = np.clip((rows[:, 0] - L / 2) / max(counter.count, 1), 0.0, 0.999)
    return (rows, pts) if return_points else rows


class _Counter:
    """Wraps an iterable and counts what it yields (the frame count is known only once the stream ends)."""

    def __init__(self, frames: Iterable[np.ndarray]):
        self._frames = frames
        self.count = 0

    def __iter__(self):
        for f in self._frames:
            self.count += 1
            yield f
