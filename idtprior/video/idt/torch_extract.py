"""Improved Dense Trajectories with PyTorch, batched over videos: the torch backend of the extractor (issue 16).

``extract_idt_batch(videos, params, device=...)`` gives each video the rows ``extract.extract_idt`` gives it (same
columns, same order of rows), computing the per-pixel work of a frame for all videos of one frame size at once, on any
torch device: the scale pyramid's Farneback flow (``torch_flow``), the camera-compensated flow and its median, the
HOG/HOF/MBH vote channels and cell sums (``torch_descriptors``), tracking, the per-point descriptors
(``torch_tracks``), dense sampling's eigenvalue test (``torch_sampling``), and the homography: OpenCV's RANSAC per
video beside the device (``homography="cpu"``, the default) or the batched RANSAC of ``torch_camera`` on it.

What stays on the host, per frame and video: the gray conversion and the uint8 pyramid (OpenCV's fixed-point resizes,
which the sampling and the descriptors read), the camera's keypoints (ORB) and good features to track (whose matches
feed the homography), and the rows of finished trajectories (``extract.finalize_cohort``, the CPU code itself). Only
``warp_flow="subtract"`` (the default) is supported.

Videos of one size run as one batch; a video that ends leaves the batch (the batch is ordered by length). The rows
agree with the CPU extractor's to float32 rounding of the flow and the descriptors and to the RANSAC's draws (tested:
``tests/video/idt/test_torch_extract.py``).
"""

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from . import camera as cam
from . import torch_camera as tc
from . import torch_descriptors as td
from . import torch_flow as tf
from . import torch_sampling as ts
from . import torch_tracks as tt
from .descriptors import N_CHANNELS
from .extract import boxes_at, Cohort, finalize_cohort, to_gray, build_pyramid, pyramid_scales
from .params import IDTParams

HOMOGRAPHY = ("device", "cpu")


def extract_idt_batch(
    videos: Sequence[Sequence[np.ndarray]],
    params: IDTParams = IDTParams(),
    boxes: Sequence | None = None,
    *,
    device: str | torch.device | None = None,
    homography: str = "cpu",
    return_points: bool = False,
    seed: int = 0,
) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
    """IDT rows ``(N_i, D)`` float32 of each of ``videos`` (each a sequence of (H, W, 3) RGB or (H, W) gray uint8
    frames), as ``extract_idt`` returns them; with ``return_points`` ``(rows, points)`` pairs. ``boxes``: per video,
    its per-frame person boxes (as ``extract_idt``'s) or None. ``device``: None picks CUDA when available.
    ``homography``: "cpu" (OpenCV's RANSAC per video, the CPU extractor's own: the default) or "device" (the batched
    RANSAC of ``torch_camera``, seeded by ``seed``: equal on KTH, but on a generated pan whose camera moves by whole
    pixels among large moving objects it settles on looser fits than OpenCV's, and only 86% of the trajectories
    match)."""
    if homography not in HOMOGRAPHY:
        raise ValueError(f"homography {homography!r} is not one of {HOMOGRAPHY}")
    if params.use_camera_compensation and params.warp_flow != "subtract":
        raise ValueError(f"the torch backend computes warp_flow='subtract' only, got {params.warp_flow!r}")
    dev = resolve_device(device)
    boxes = list(boxes) if boxes is not None else [None] * len(videos)
    if len(boxes) != len(videos):
        raise ValueError(f"boxes: {len(boxes)} entries for {len(videos)} videos")
    grays: list[list[np.ndarray]] = []
    for i, frames in enumerate(videos):
        g = [to_gray(f, t) for t, f in enumerate(frames)]
        if any(x.shape != g[0].shape for x in g):
            bad = next(t for t, x in enumerate(g) if x.shape != g[0].shape)
            raise ValueError(f"video {i}, frame {bad}: size {g[bad].shape} differs from the first frame's {g[0].shape}")
        grays.append(g)
    out: list = [None] * len(videos)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(grays):
        groups.setdefault(g[0].shape if g else (0, 0), []).append(i)
    for shape, members in groups.items():
        members.sort(key=lambda i: -len(grays[i]))  # the longest first: the active videos are a prefix
        results = _extract_group([grays[i] for i in members], [boxes[i] for i in members], shape, params, dev,
                                 homography, seed)
        for i, r in zip(members, results):
            out[i] = r if return_points else r[0]
    return out


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available, else the CPU (what ``extract_idt_batch`` runs on)."""
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Tracks:
    """The live trajectories of one scale, of every video of the batch, as flat tensors (start order per video)."""

    def __init__(self, params: IDTParams, device: torch.device):
        L, cells = params.track_length, params.nxy_cell * params.nxy_cell
        self.pos = torch.zeros((0, L + 1, 2), dtype=torch.float32, device=device)
        self.comp = torch.zeros((0, L, 2), dtype=torch.float32, device=device)
        self.desc = torch.zeros((0, params.nt_cell, cells * N_CHANNELS), dtype=torch.float32, device=device)
        self.alive = torch.zeros(0, dtype=torch.bool, device=device)
        self.age = torch.zeros(0, dtype=torch.int64, device=device)
        self.video = torch.zeros(0, dtype=torch.int64, device=device)
        self.start = torch.zeros(0, dtype=torch.int64, device=device)

    def keep(self, mask: torch.Tensor) -> None:
        for name in ("pos", "comp", "desc", "alive", "age", "video", "start"):
            setattr(self, name, getattr(self, name)[mask])

    def add(self, start: int, points: list[torch.Tensor]) -> None:
        """New tracks started at frame ``start``: ``points[b] (n_b, 2)`` of video b, appended video by video."""
        dev = self.pos.device
        new = torch.cat(points)
        n = len(new)
        if n == 0:
            return
        pos = torch.zeros((n, *self.pos.shape[1:]), dtype=torch.float32, device=dev)
        pos[:, 0] = new
        video = torch.repeat_interleave(torch.arange(len(points), device=dev),
                                        torch.tensor([len(p) for p in points], device=dev))
        self.pos = torch.cat([self.pos, pos])
        self.comp = torch.cat([self.comp, torch.zeros((n, *self.comp.shape[1:]), device=dev)])
        self.desc = torch.cat([self.desc, torch.zeros((n, *self.desc.shape[1:]), device=dev)])
        self.alive = torch.cat([self.alive, torch.ones(n, dtype=torch.bool, device=dev)])
        self.age = torch.cat([self.age, torch.zeros(n, dtype=torch.int64, device=dev)])
        self.video = torch.cat([self.video, video])
        self.start = torch.cat([self.start, torch.full((n,), start, dtype=torch.int64, device=dev)])


def _extract_group(grays: list[list[np.ndarray]], boxes: list, shape: tuple[int, int], params: IDTParams,
                   dev: torch.device, homography: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``extract_idt``'s (rows, points) of each video of one frame size, longest first."""
    L = params.track_length
    per_cell = L // params.nt_cell
    empty = (np.zeros((0, params.descriptor_dim), np.float32), np.zeros((0, L + 1, 2), np.float32))
    lengths = [len(g) for g in grays]
    B = len(grays)
    rows: list[list[np.ndarray]] = [[] for _ in range(B)]
    points: list[list[np.ndarray]] = [[] for _ in range(B)]
    if not B or not lengths[0]:
        return [empty] * B
    frame_hw = shape
    to_full = max(frame_hw) / params.max_side if params.max_side and max(frame_hw) > params.max_side else 1.0
    work_hw = (int(round(frame_hw[0] / to_full)), int(round(frame_hw[1] / to_full)))
    scales = pyramid_scales(*work_hw, params)
    if not scales:
        return [empty] * B
    sizes, factors = [s for _, s in scales], [f for f, _ in scales]
    flow = tf.TorchPyramidFlow(sizes, factors, params, dev)
    detector = cam.make_detector(params) if params.use_camera_compensation else None
    tracks = [_Tracks(params, dev) for _ in scales]
    cell = params.patch_size // params.nxy_cell
    prev_pyr: list[torch.Tensor] | None
    prev_exp: list[torch.Tensor] | None
    prev_host = prev_pyr = prev_exp = None
    prev_kp: list = [None] * B
    for t in range(lengths[0]):
        n = sum(1 for x in lengths if x > t)  # the active videos: a prefix
        frames = [grays[b][t] for b in range(n)]
        if to_full != 1.0:
            frames = [cv2.resize(f, (sizes[0][1], sizes[0][0]), interpolation=cv2.INTER_AREA) for f in frames]
        host = [build_pyramid(f, sizes) for f in frames]  # per video, per scale: OpenCV's uint8 resizes
        pyr = [torch.from_numpy(np.stack([p[k] for p in host])).to(dev) for k in range(len(scales))]
        cur_exp = flow.expand(pyr[0])
        if t > 0:
            assert prev_exp is not None and prev_pyr is not None  # set at the end of frame t - 1
            flows, med = flow.flows([e[:n] for e in prev_exp], cur_exp)
            if params.use_camera_compensation:
                med0 = med[0].permute(0, 2, 3, 1).cpu().numpy()  # (n, h, w, 2): the flow matches read it
                H = _homographies(detector, host, prev_host, prev_kp, med0, boxes, t, to_full, params, dev,
                                  homography, seed + t)
                comp = [f - tc.homography_flow(_scaled(H, s), *sz) for f, s, sz in zip(flows, factors, sizes)]
            else:
                comp = flows
            comp_med = [tf.median5(c, params.median_size) for c in comp]
            finished: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n)]
            for k, (h, w) in enumerate(sizes):
                tr = tracks[k]
                tr.keep(tr.video < n)  # the tracks of a video that has ended end with it, unfinished
                if not len(tr.alive):
                    continue
                channels = td.frame_channels(prev_pyr[k][:n], comp[k], params.hof_zero_threshold, comp_med[k])
                sums = td.cell_sums(channels, cell)  # (n, 33, h, w)
                idx = torch.arange(len(tr.age), device=dev)
                pts = tr.pos[idx, tr.age]  # (m, 2) at t-1
                hist = tt.cell_histograms(sums, pts, params.patch_size, params.nxy_cell, tr.video)
                tr.desc[idx, tr.age // per_cell] += tt.frame_descriptors(hist)
                new, cstep, inside = tt.track_step(pts, med[k], comp_med[k], h, w, tr.video)
                tr.comp[idx, tr.age] = cstep
                tr.pos[idx, tr.age + 1] = new
                tr.alive &= inside
                tr.age += 1
                done = tr.age == L
                if bool(done.any()):
                    _finish(tr, done, factors[k], t, frame_hw, params, to_full, finished)
                tr.keep(~done & _cohort_alive(tr))
            for b in range(n):
                for r, p in finished[b]:  # scale by scale, as the CPU extractor yields them
                    rows[b].append(r)
                    points[b].append(p)
        if t % params.init_gap == 0:
            for k in range(len(scales)):
                tr = tracks[k]
                at = tr.pos[torch.arange(len(tr.age), device=dev), tr.age]  # (m, 2) positions at t
                occupied = [at[tr.alive & (tr.video == b)] for b in range(n)]
                tr.add(t, ts.sample_points(pyr[k], occupied, params))
        if t == 0 and params.use_camera_compensation:
            prev_kp = [cam.detect(detector, p[0]) for p in host]
        prev_host, prev_pyr, prev_exp = host, pyr, cur_exp
    out = []
    for b in range(B):
        if not rows[b]:
            out.append(empty)
            continue
        r, p = np.concatenate(rows[b]), np.concatenate(points[b])
        r[:, 9] = np.clip((r[:, 0] - L / 2) / max(lengths[b], 1), 0.0, 0.999)
        out.append((r, p))
    return out


def _cohort_alive(tr: _Tracks) -> torch.Tensor:
    """Per track: some track of its cohort (same video and start frame) is alive. The CPU extractor keeps a cohort
    while any of its tracks lives, dead tracks included (they are finalized with it, then pruned as not alive)."""
    if not len(tr.alive):
        return tr.alive
    _, inverse = torch.unique(tr.video * 1_000_003 + tr.start, return_inverse=True)
    alive = torch.zeros(int(inverse.max()) + 1, dtype=torch.int64, device=inverse.device)
    alive.index_add_(0, inverse, tr.alive.to(torch.int64))
    return alive[inverse] > 0


def _finish(tr: _Tracks, done: torch.Tensor, factor: float, t: int, frame_hw, params: IDTParams,
            to_full: float, out: list) -> None:
    """Rows of the tracks of ``done`` (each video's cohort started at frame ``t - L``, which reached L steps at
    ``t``): ``extract.finalize_cohort`` per video, on the host."""
    sel = torch.nonzero(done).ravel()
    video = tr.video[sel].cpu().numpy()
    pos, comp, desc = tr.pos[sel].cpu().numpy(), tr.comp[sel].cpu().numpy(), tr.desc[sel].cpu().numpy()
    alive = tr.alive[sel].cpu().numpy()
    L = params.track_length
    for b in np.unique(video):
        m = video == b
        c = Cohort(start=t - L, pos=pos[m], comp=comp[m], desc=desc[m], alive=alive[m], age=L)
        res = finalize_cohort(c, factor, t, frame_hw, params, to_full)
        if res is not None:
            out[int(b)].append(res)


def _scaled(H: torch.Tensor, scale: float) -> torch.Tensor:
    """``camera.scaled_homography`` of a batch ``H (n, 3, 3)``."""
    S = torch.diag(torch.tensor([1.0 / scale, 1.0 / scale, 1.0], dtype=H.dtype, device=H.device))
    return S @ H @ torch.linalg.inv(S)


def _homographies(detector, pyr_host, prev_pyr, prev_kp: list, med0: np.ndarray, boxes: list, t: int,
                  to_full: float, params: IDTParams, dev: torch.device, homography: str, seed: int) -> torch.Tensor:
    """The homography t-1 -> t ``(n, 3, 3)`` float64 of each active video: keypoint matches (ORB) and flow matches
    (good features to track of frame t-1 moved by the median flow) outside person boxes, then RANSAC."""
    n = len(pyr_host)
    srcs, dsts = [], []
    for b in range(n):
        kp = cam.detect(detector, pyr_host[b][0])
        if prev_kp[b] is not None:
            src, dst = cam.match_keypoints(prev_kp[b], kp, params.match_ratio)
        else:
            src = dst = np.zeros((0, 2), np.float32)
        prev_kp[b] = kp
        fs, fd = cam.flow_matches(prev_pyr[b][0], med0[b], params)
        src, dst = np.concatenate([src, fs]), np.concatenate([dst, fd])
        keep = cam.outside_boxes(src, boxes_at(boxes[b], t - 1, 1.0 / to_full)) & cam.outside_boxes(
            dst, boxes_at(boxes[b], t, 1.0 / to_full))
        srcs.append(src[keep])
        dsts.append(dst[keep])
    H: np.ndarray | torch.Tensor
    if homography == "cpu":
        H = np.stack([cam.estimate_homography(s, d, params)[0] for s, d in zip(srcs, dsts)])
        return torch.from_numpy(H).to(dev)
    m = max(1, max(len(s) for s in srcs))
    S = np.zeros((n, m, 2), np.float32)
    D = np.zeros((n, m, 2), np.float32)
    for b, (s, d) in enumerate(zip(srcs, dsts)):
        S[b, : len(s)], D[b, : len(d)] = s, d
    counts = torch.tensor([len(s) for s in srcs])
    H, _ = tc.estimate_homographies(torch.from_numpy(S).to(dev), torch.from_numpy(D).to(dev), counts, params,
                                    seed=seed)
    return H
