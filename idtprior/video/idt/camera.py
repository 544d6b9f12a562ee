"""Camera motion: a homography between consecutive frames, by RANSAC from keypoint matches and flow matches.

ICCV 2013 (section 2.1): SURF matches plus optical-flow matches at good features to track, complementary (SURF on
blob-like structure, flow on corners and dense texture), with matches on humans removed. SURF is not in pip's OpenCV;
we default to ORB: at 320x240 SIFT (the closest relative of SURF: blobs, float descriptors) costs ~120 ms a frame on
textured video against ~14 ms for ORB, and on KTH both give the same fidelity (matched 0.549 vs 0.552); SIFT is an option.
"""

from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np

from . import kernels
from .params import IDTParams


@dataclass
class Keypoints:
    """Detector output of one frame: positions (n, 2) float32 and descriptors (n, D)."""

    points: np.ndarray
    descriptors: np.ndarray | None


def make_detector(params: IDTParams):
    """The OpenCV feature detector for ``params.feature_detector``, or None for flow matches only."""
    if params.feature_detector == "sift":
        return cv2.SIFT_create(nfeatures=params.max_features)  # type: ignore[attr-defined]  # stubs lack the alias
    if params.feature_detector == "orb":
        return cv2.ORB_create(nfeatures=params.max_features)  # type: ignore[attr-defined]  # stubs lack the alias
    return None


def detect(detector, gray: np.ndarray) -> Keypoints:
    """Keypoints and descriptors of one ``(H, W)`` uint8 frame."""
    if detector is None:
        return Keypoints(np.zeros((0, 2), np.float32), None)
    kps, desc = detector.detectAndCompute(gray, None)
    pts = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
    return Keypoints(pts, desc)


def match_keypoints(a: Keypoints, b: Keypoints, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Descriptor matches from frame a to frame b with Lowe's ratio test -> (m, 2), (m, 2) float32."""
    empty = np.zeros((0, 2), np.float32)
    if a.descriptors is None or b.descriptors is None or len(a.points) < 2 or len(b.points) < 2:
        return empty, empty
    norm = cv2.NORM_HAMMING if a.descriptors.dtype == np.uint8 else cv2.NORM_L2
    pairs = cv2.BFMatcher(norm).knnMatch(a.descriptors, b.descriptors, k=2)
    ia, ib = [], []
    for p in pairs:
        if len(p) == 2 and p[0].distance < ratio * p[1].distance:
            ia.append(p[0].queryIdx)
            ib.append(p[0].trainIdx)
    return a.points[ia], b.points[ib]


def flow_matches(prev_gray: np.ndarray, flow: np.ndarray, params: IDTParams) -> tuple[np.ndarray, np.ndarray]:
    """Matches from good features to track in ``prev_gray`` displaced by ``flow`` (H, W, 2) -> (m, 2), (m, 2) float32."""
    corners = cv2.goodFeaturesToTrack(
        prev_gray, params.flow_match_corners, params.flow_match_quality, params.flow_match_min_distance
    )
    if corners is None:
        empty = np.zeros((0, 2), np.float32)
        return empty, empty
    src = corners.reshape(-1, 2).astype(np.float32)
    h, w = flow.shape[:2]
    xi = np.clip(np.rint(src[:, 0]).astype(np.int64), 0, w - 1)
    yi = np.clip(np.rint(src[:, 1]).astype(np.int64), 0, h - 1)
    dst = src + flow[yi, xi]
    return src, dst


def lk_matches(prev_gray: np.ndarray, gray: np.ndarray, params: IDTParams) -> tuple[np.ndarray, np.ndarray]:
    """Matches from good features to track in ``prev_gray`` followed into ``gray`` by pyramidal Lucas-Kanade (used
    when no raw dense flow is computed) -> (m, 2), (m, 2) float32."""
    empty = np.zeros((0, 2), np.float32)
    corners = cv2.goodFeaturesToTrack(
        prev_gray, params.flow_match_corners, params.flow_match_quality, params.flow_match_min_distance
    )
    if corners is None:
        return empty, empty
    # cv2 takes None for the output nextPts (it allocates one); its stubs do not allow it
    nxt, status, _ = cv2.calcOpticalFlowPyrLK(  # type: ignore[call-overload]
        prev_gray, gray, corners, None, winSize=(15, 15), maxLevel=2)
    ok = status.ravel() == 1
    return corners.reshape(-1, 2)[ok].astype(np.float32), nxt.reshape(-1, 2)[ok].astype(np.float32)


def outside_boxes(points: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
    """Mask (m,) bool of the points (m, 2) that fall in none of ``boxes`` (K, >=4) [x1, y1, x2, y2, ...]."""
    keep = np.ones(len(points), bool)
    if boxes is None or len(boxes) == 0 or len(points) == 0:
        return keep
    b = np.asarray(boxes, np.float32)[:, :4]
    x, y = points[:, 0:1], points[:, 1:2]
    inside = (x >= b[:, 0]) & (x <= b[:, 2]) & (y >= b[:, 1]) & (y <= b[:, 3])  # (m, K)
    return cast(np.ndarray, ~inside.any(1))


def estimate_homography(
    src: np.ndarray,
    dst: np.ndarray,
    params: IDTParams,
    src_boxes: np.ndarray | None = None,
    dst_boxes: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Homography (3, 3) float64 mapping frame t-1 to frame t from matches ``src`` -> ``dst`` (m, 2), and the number of
    matches used after removing those inside person boxes. Too few matches or a failed fit give the identity."""
    keep = outside_boxes(src, src_boxes) & outside_boxes(dst, dst_boxes)
    src, dst = src[keep], dst[keep]
    n = len(src)
    if n < max(params.min_matches, 4):
        return np.eye(3), n
    H, _ = cv2.findHomography(src, dst, cv2.RANSAC, params.ransac_threshold)
    if H is None or not np.all(np.isfinite(H)) or abs(H[2, 2]) < 1e-12:
        return np.eye(3), n
    return H / H[2, 2], n


def scaled_homography(H: np.ndarray, scale: float) -> np.ndarray:
    """The homography ``H`` of full-resolution pixels expressed in the pixels of a frame shrunk by ``scale``."""
    S = np.diag([1.0 / scale, 1.0 / scale, 1.0])
    return S @ H @ np.linalg.inv(S)


def homography_flow(H: np.ndarray, h: int, w: int) -> np.ndarray:
    """Displacement field (h, w, 2) float32 of the homography ``H``: H(x) - x at every pixel, in float64 (a compiled
    loop, ``kernels.homography_flow``; the numpy expression it reproduces bit for bit is in the tests)."""
    return kernels.homography_flow(H, h, w)
