import os
from pathlib import Path

import cv2
import numpy as np
import pytest


def shared_data_dir() -> Path:
    """``../shared/data`` next to the repository, or ``$IDTPRIOR_SHARED_DATA``."""
    env = os.environ.get("IDTPRIOR_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def _kth() -> Path:
    d = shared_data_dir() / "kth"
    if not (d / "person01_boxing_d1_uncomp.avi").exists() or not (d / "person01_boxing_d1.idt.txt.gz").exists():
        pytest.skip(f"reference KTH clip and IDT output not found under {d} (set IDTPRIOR_SHARED_DATA)")
    return d


@pytest.fixture
def kth_dir() -> Path:
    return _kth()


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture (h, w) uint8 with corners everywhere, so dense sampling keeps most points."""
    rng = np.random.default_rng(seed)
    noise = rng.random((h // 4 + 1, w // 4 + 1)).astype(np.float32)
    img = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    img = (img - img.min()) / (img.max() - img.min() + 1e-9)
    return (img * 200 + 28).astype(np.uint8)


def shift_image(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    M = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, M, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def kth_dir_module() -> Path:
    """``kth_dir`` for module-scoped fixtures (one extraction shared by several tests)."""
    return _kth()
