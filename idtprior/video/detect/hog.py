"""OpenCV's HOG people detector (Dalal & Triggs 2005: HOG features + a linear SVM over a 64x128 window), the
dependency-free fallback. It only finds upright people at least ~64x128 pixels, so small frames are upscaled first."""

import functools

import cv2
import numpy as np

MIN_HEIGHT = 256  # frames shorter than this are upscaled: the detection window is 128 px tall


@functools.lru_cache(maxsize=1)
def _hog():
    if not hasattr(cv2, "HOGDescriptor"):  # OpenCV 5 keeps it in the contrib build only
        raise ImportError(f"the hog person detector needs OpenCV's HOGDescriptor, which this cv2 {cv2.__version__} "
                          "lacks: install opencv-contrib-python-headless (the project's dependency)")
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    return hog


def hog_boxes(batch: np.ndarray) -> list[np.ndarray]:
    """Raw boxes of each frame of (B, H, W, 3) uint8 RGB: (K, 5) float32 [x1, y1, x2, y2, svm margin]."""
    hog = _hog()
    out = []
    for frame in batch:
        h = frame.shape[0]
        scale = max(1.0, MIN_HEIGHT / h)
        img = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) if scale > 1 else frame
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        rects, weights = hog.detectMultiScale(gray, winStride=(8, 8), padding=(8, 8), scale=1.05)
        if len(rects) == 0:
            out.append(np.zeros((0, 5), np.float32))
            continue
        r = np.asarray(rects, np.float32).reshape(-1, 4)
        w = np.asarray(weights, np.float32).reshape(-1, 1)
        boxes = np.concatenate([r[:, :2], r[:, :2] + r[:, 2:4]], axis=1) / scale
        boxes = boxes.clip(0, [frame.shape[1], frame.shape[0]] * 2)  # windows can reach past the border
        out.append(np.concatenate([boxes, w], axis=1).astype(np.float32))
    return out
