"""Small media makers shared by the tests (real files written with PyAV)."""

import av
import numpy as np


def moving_square_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8: a textured background with a bright square moving right 2 px a frame."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    frames = np.repeat(bg[None], n, axis=0)
    for t in range(n):
        x = (4 + 2 * t) % (w - 12)
        frames[t, 10:22, x:x + 12] = (250, 30, 30)
    return frames


def write_audio_only(path) -> None:
    """An mp4 with one AAC audio stream and no video."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(10):
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_moving_square_videos(folder, n: int, frames: int = 12) -> list:
    """``clip000.mp4`` ... in ``folder``: n H.264 videos of ``moving_square_frames`` (seeds 0..n-1), 25 fps."""
    from pathlib import Path

    from idtprior.video.io import write_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"clip{i:03d}.mp4")
        write_video(paths[-1], moving_square_frames(frames, seed=i), fps=25, options={"preset": "ultrafast"})
    return paths
