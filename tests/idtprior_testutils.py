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


def knn_reference(train_x, train_y, test_x=None, test_y=None, k: int = 20, tau: float = 0.07) -> float:
    """Weighted kNN accuracy by brute force in float64, one query at a time (Wu et al. 2018): each labelled query
    takes its k most similar labelled train rows (``test_x=None``: the train rows themselves, each leaving itself
    out), each voting ``exp(sim / tau)`` for its label; rows labelled < 0 neither vote nor count. Rows are used as
    given (L2-normalise them first where the code under test does)."""
    import numpy as np

    train_x, train_y = np.asarray(train_x, np.float64), np.asarray(train_y)
    leave_one_out = test_x is None
    if leave_one_out:
        test_x, test_y = train_x, train_y
    test_x, test_y = np.asarray(test_x, np.float64), np.asarray(test_y)
    voters = [j for j in range(len(train_y)) if train_y[j] >= 0]
    correct = total = 0
    for i in range(len(test_y)):
        if test_y[i] < 0:
            continue
        pool = [j for j in voters if not (leave_one_out and j == i)]
        sims = sorted(((float(test_x[i] @ train_x[j]), j) for j in pool), reverse=True)[:min(k, len(pool))]
        votes: dict[int, float] = {}
        for sim, j in sims:
            votes[int(train_y[j])] = votes.get(int(train_y[j]), 0.0) + float(np.exp(sim / tau))
        best = max(votes.values())
        correct += min(c for c, v in votes.items() if v == best) == int(test_y[i])  # ties: the lowest class
        total += 1
    return correct / total
