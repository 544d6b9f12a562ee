"""Helpers that write odd media files for tests."""

import av
import numpy as np


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
