"""Parameters of the Improved Dense Trajectories extractor.

Defaults follow the reference release (Wang & Schmid, ICCV 2013) where the papers or its documented command line give
them; the rest (flow settings, pruning thresholds) were pinned down by matching that release's output on the KTH clip.
Every field is a plain scalar or None so the pipeline config can mirror it 1:1.
"""

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class IDTParams:
    # dense sampling and tracking (IJCV 2013, section 3)
    scale_num: int = 8  # spatial scales; fewer where the frame gets smaller than patch_size
    scale_stride: float = math.sqrt(2)  # ratio between consecutive scales
    init_gap: int = 1  # sample new points every init_gap frames
    track_length: int = 15  # L: frames a trajectory is tracked
    min_distance: int = 5  # W: grid step of dense sampling, pixels at each scale
    quality: float = 0.001  # points with min eigenvalue below quality * max over the frame are dropped
    # descriptor volume (N x N pixels x L frames split into nxy_cell x nxy_cell x nt_cell cells)
    patch_size: int = 32
    nxy_cell: int = 2
    nt_cell: int = 3
    # frames whose longer side exceeds max_side are resized first (the reference runs at native size: off)
    max_side: int | None = None
    # Farneback flow: one coarse-to-fine pass over the scale pyramid gives every scale's flow (see flow.py)
    flow_winsize: int = 10  # averaging window: Gaussian over 2 * (winsize // 2) + 1 pixels, sigma 0.3 * (winsize // 2)
    flow_iterations: int = 2
    flow_poly_n: int = 7  # polynomial expansion over (2 poly_n + 1)^2 pixels, Gaussian weights of sigma poly_sigma
    flow_poly_sigma: float = 1.5
    flow_gaussian_window: bool = True  # Gaussian (not box) averaging window
    median_size: int = 5  # median filter of the flow before tracking and before seeding the next finer level (1, 3, 5)
    # OpenCV's own per-scale pyramid: used only by extract.farneback, the benchmarks' speed baseline
    flow_pyr_scale: float = 0.7071067811865476  # 1/sqrt(2)
    flow_levels: int = 0  # 0: as many as keep the coarsest level >= flow_min_size pixels
    flow_min_size: int = 16
    # HOF: flow magnitudes below this go to the zero-motion bin (pixels per frame at that scale)
    hof_zero_threshold: float = 0.5
    # pruning of trajectories
    min_var: float = math.sqrt(3)  # static: max(std x, std y) of the points must exceed this (full-resolution pixels)
    max_var: float = 50.0  # and stay below this (tracking gone wild)
    # erratic: a trajectory is dropped when its largest step exceeds BOTH max_dis (full-resolution pixels) and
    # erratic_ratio of its whole length; the reference's KTH output keeps a track at 0.74 of its length (6.6 px)
    max_dis: float = 20.0
    erratic_ratio: float = 0.7
    min_camera_displacement: float = 1.0  # camera-only: largest camera-compensated displacement must exceed this
    # camera motion (ICCV 2013, section 2)
    use_camera_compensation: bool = True
    feature_detector: str = "orb"  # "orb" (default: 10x faster than SIFT, same KTH fidelity) | "sift" | "none"
    max_features: int = 1000  # keypoints per frame for the detector
    match_ratio: float = 0.8  # Lowe's ratio test for descriptor matches
    flow_match_corners: int = 1000  # good features to track whose flow gives matches
    flow_match_quality: float = 0.001
    flow_match_min_distance: int = 3
    ransac_threshold: float = 1.0  # reprojection error (pixels) of a RANSAC inlier
    min_matches: int = 20  # below this many matches the homography is the identity
    # "recompute": Farneback on the warped frame (the paper's compensated flow), tracking flow = it + H's motion, flow
    # matches by Lucas-Kanade (one dense pass); "both": also a raw Farneback pass for tracking and flow matches (the
    # literal paper, 2x flow time); "subtract": raw Farneback only, compensated flow = raw - H's motion (fastest)
    warp_flow: str = "subtract"

    def __post_init__(self) -> None:
        _positive = ("scale_num", "init_gap", "track_length", "min_distance", "patch_size", "nxy_cell", "nt_cell")
        for name in _positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"IDTParams.{name} must be a positive integer, got {value!r}")
        if self.scale_stride <= 1.0:
            raise ValueError(f"IDTParams.scale_stride must be > 1, got {self.scale_stride!r}")
        if self.track_length % self.nt_cell:
            raise ValueError(
                f"IDTParams.track_length ({self.track_length}) must be a multiple of nt_cell ({self.nt_cell})"
            )
        if self.patch_size % self.nxy_cell:
            raise ValueError(f"IDTParams.patch_size ({self.patch_size}) must be a multiple of nxy_cell ({self.nxy_cell})")
        if self.max_side is not None and self.max_side < self.patch_size:
            raise ValueError(f"IDTParams.max_side ({self.max_side}) must be at least patch_size ({self.patch_size})")
        if self.median_size not in (1, 3, 5):
            raise ValueError(f"IDTParams.median_size must be 1, 3 or 5, got {self.median_size!r}")
        if self.feature_detector not in ("sift", "orb", "none"):
            raise ValueError(f"IDTParams.feature_detector must be 'sift', 'orb' or 'none', got {self.feature_detector!r}")
        if self.warp_flow not in ("recompute", "both", "subtract"):
            raise ValueError(f"IDTParams.warp_flow must be 'recompute', 'both' or 'subtract', got {self.warp_flow!r}")
        if not 0.0 < self.erratic_ratio <= 1.0:
            raise ValueError(f"IDTParams.erratic_ratio must be in (0, 1], got {self.erratic_ratio!r}")

    @property
    def descriptor_dim(self) -> int:
        """Columns of one output row: 10 + 2L + cells * (8 + 9 + 8 + 8)."""
        cells = self.nxy_cell * self.nxy_cell * self.nt_cell
        return 10 + 2 * self.track_length + cells * (8 + 9 + 8 + 8)


def param_names() -> list[str]:
    """Field names of ``IDTParams``, in order (for mirroring into configs)."""
    return [f.name for f in fields(IDTParams)]
