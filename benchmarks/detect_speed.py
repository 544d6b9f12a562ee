"""Person detection speed: ms per frame of each backend at 320x240, detecting every frame and every 4th / 8th frame
(boxes carried between), with ratios against a baseline measured in the same run: decoding-free Farneback flow of one
pair of frames at the same size (what IDT does at least once per frame), so a ratio of 1 means detection costs as much
as one flow field. Usage: python benchmarks/detect_speed.py [N_FRAMES] [BACKENDS]

maskrcnn runs only when torchvision imports and IDTPRIOR_MASKRCNN_WEIGHTS names a weights file (random weights are
saved to a temporary file otherwise, which times the same network)."""

import os
import sys
import tempfile
import time

import cv2
import numpy as np

from idtprior.video.detect import DetectParams, Detector
from idtprior.video.idt import IDTParams
from idtprior.video.idt.extract import farneback


def frames_320x240(n: int, seed: int = 0) -> np.ndarray:
    """Seeded 320x240 RGB frames: a pan over smooth texture with a dark upright blob walking across."""
    rng = np.random.default_rng(seed)
    world = cv2.resize(rng.random((60, 200)).astype(np.float32), (640, 240), interpolation=cv2.INTER_CUBIC)
    world = cv2.normalize(world, None, 40, 220, cv2.NORM_MINMAX).astype(np.uint8)
    out = np.empty((n, 240, 320, 3), np.uint8)
    for t in range(n):
        img = world[:, t % 320: t % 320 + 320].copy()
        x = 40 + (3 * t) % 220
        cv2.ellipse(img, (x, 70), (12, 15), 0, 0, 360, 30, -1)
        cv2.rectangle(img, (x - 18, 85), (x + 18, 170), 35, -1)
        cv2.rectangle(img, (x - 14, 170), (x + 14, 225), 45, -1)
        out[t] = np.repeat(img[..., None], 3, 2)
    return out


def maskrcnn_weights() -> str | None:
    path = os.environ.get("IDTPRIOR_MASKRCNN_WEIGHTS")
    if path:
        return path
    try:
        import torch
        import torchvision.models.detection as detection
    except (ImportError, RuntimeError) as e:
        print(f"maskrcnn: skipped, torchvision does not import here ({type(e).__name__})")
        return None
    torch.manual_seed(0)
    tmp = os.path.join(tempfile.mkdtemp(), "random_maskrcnn.pth")
    torch.save(detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(), tmp)
    return tmp


def time_backend(params: DetectParams, frames: np.ndarray) -> float:
    det = Detector(params)
    det(frames[: params.batch_size])  # warm-up: first calls allocate
    t0 = time.perf_counter()
    det(frames)
    return 1e3 * (time.perf_counter() - t0) / len(frames)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 48
    backends = sys.argv[2].split(",") if len(sys.argv) > 2 else ["none", "ssdlite", "hog", "maskrcnn"]
    frames = frames_320x240(n)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    p = IDTParams()
    t0 = time.perf_counter()
    for a, b in zip(gray[:-1], gray[1:]):
        farneback(a, b, p)
    flow_ms = 1e3 * (time.perf_counter() - t0) / (len(gray) - 1)
    print(f"{n} frames 320x240, {cv2.getNumThreads()} OpenCV threads; baseline: Farneback flow {flow_ms:.1f} ms/frame")
    for backend in backends:
        extra = {}
        if backend == "maskrcnn":
            weights = maskrcnn_weights()
            if weights is None:
                continue
            extra = {"maskrcnn_weights": weights, "batch_size": 4}
        for every in (1, 4, 8):
            try:
                ms = time_backend(DetectParams(backend=backend, every=every, **extra), frames)
            except ImportError as e:
                print(f"{backend}: skipped, {e}")
                break
            print(f"{backend:>8} every={every}: {ms:7.1f} ms/frame  ({ms / flow_ms:5.2f}x the flow baseline)")


if __name__ == "__main__":
    main()
