"""``idtprior inspect WS STAGE VIDEO``: render what a stage stored for one video into files a person can look at."""

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from idtprior.storage import FrameStore, Workspace, read_manifest

INSPECTORS: dict[str, Callable[[Workspace, str, Path], list[Path]]] = {}


def inspector(stage: str):
    def register(fn):
        INSPECTORS[stage] = fn
        return fn

    return register


def inspect_stage(workspace: str, stage: str, video: str, out: str | None = None) -> list[Path]:
    """Write the stage's view of ``video`` under ``out`` (default ``WS/artifacts/inspect``); returns the files."""
    ws = Workspace(workspace)
    if stage not in INSPECTORS:
        raise KeyError(f"no inspector for stage {stage!r}; known: {sorted(INSPECTORS)}")
    folder = Path(out) if out else Path(ws.artifacts_dir) / "inspect"
    folder.mkdir(parents=True, exist_ok=True)
    return INSPECTORS[stage](ws, video, folder)


def frame_strip(frames: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tile (T, H, W, 3) frames into one (rows*H, columns*W, 3) image, row-major."""
    t, h, w, c = frames.shape
    rows = -(-t // columns)
    canvas = np.zeros((rows * h, columns * w, c), frames.dtype)
    for i, img in enumerate(frames):
        r, col = divmod(i, columns)
        canvas[r * h:(r + 1) * h, col * w:(col + 1) * w] = img
    return canvas


@inspector("ingest")
def _inspect_ingest(ws: Workspace, video: str, folder: Path) -> list[Path]:
    rows = [r for r in read_manifest(ws) if r.video_id == video]
    if not rows:
        raise KeyError(f"video {video!r} is not in the manifest of {ws.url}")
    path = folder / f"{video}.ingest.json"
    path.write_text(json.dumps(rows[0].__dict__, indent=2))
    return [path]


@inspector("decode")
def _inspect_decode(ws: Workspace, video: str, folder: Path) -> list[Path]:
    store = FrameStore(ws)
    n = store.num_frames(video)
    picks = np.linspace(0, n - 1, min(n, 16)).round().astype(int)
    frames = np.stack([store.read_clip(video, int(i), 1)[0] for i in picks])
    path = folder / f"{video}.decode.png"
    cv2.imwrite(str(path), cv2.cvtColor(frame_strip(frames), cv2.COLOR_RGB2BGR))
    return [path]
