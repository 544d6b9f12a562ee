"""``idtprior inspect WS STAGE VIDEO``: render what a stage stored for one video into files a person can look at."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from idtprior.storage import FrameStore, Workspace, read_manifest
from idtprior.video.idt.render import render_trajectories, save_animation, save_strip

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


def _manifest_row(ws: Workspace, video: str):
    rows = [r for r in read_manifest(ws) if r.video_id == video]
    if not rows:
        raise KeyError(f"video {video!r} is not in the manifest of {ws.url}")
    return rows[0]


@inspector("ingest")
def _inspect_ingest(ws: Workspace, video: str, folder: Path) -> list[Path]:
    row = _manifest_row(ws, video)
    path = folder / f"{video}.ingest.json"
    path.write_text(json.dumps(row.__dict__, indent=2))
    return [path]


@inspector("decode")
def _inspect_decode(ws: Workspace, video: str, folder: Path) -> list[Path]:
    store = FrameStore(ws)
    n = store.num_frames(video)
    picks = np.linspace(0, n - 1, min(n, 16)).round().astype(int)
    path = folder / f"{video}.decode.png"
    save_strip((store.read_clip(video, int(i), 1)[0] for i in picks), path, every=1, columns=8)
    return [path]


@inspector("idt")
def _inspect_idt(ws: Workspace, video: str, folder: Path) -> list[Path]:
    """Trajectories (default IDT settings) drawn over the source video, as the reference visualiser does."""
    from idtprior.config.stages import IDTConfig
    from idtprior.stages.idt import idt_params
    from idtprior.video.idt import extract_idt
    from idtprior.video.io import iter_frames

    row = _manifest_row(ws, video)
    params = idt_params(IDTConfig())
    frames = list(iter_frames(row.path))
    traj, points = extract_idt(iter(frames), params, return_points=True)
    strip, anim = folder / f"{video}.idt.png", folder / f"{video}.idt.gif"
    drawn = list(render_trajectories(frames, traj, points, params.track_length))
    save_strip(drawn, strip, every=max(1, len(drawn) // 12), columns=6)
    save_animation(drawn, anim, fps=row.fps or 25.0)
    return [strip, anim]


@inspector("detect")
def _inspect_detect(ws: Workspace, video: str, folder: Path) -> list[Path]:
    """The stored person boxes drawn (green, with their score) on 16 frames spread over the source video."""
    import cv2

    from idtprior.stages.detect import read_video_boxes
    from idtprior.video.io import iter_frames

    row = _manifest_row(ws, video)
    boxes = read_video_boxes(ws, video)
    picks = set(np.linspace(0, len(boxes) - 1, min(len(boxes), 16)).round().astype(int).tolist())
    drawn = []
    for t, frame in enumerate(iter_frames(row.path)):
        if t not in picks or t >= len(boxes):
            continue
        img = np.ascontiguousarray(frame).copy()
        for x1, y1, x2, y2, score in boxes[t]:
            cv2.rectangle(img, (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2))), (0, 255, 0), 2)
            cv2.putText(img, f"{score:.2f}", (int(x1) + 2, int(y1) + 12), cv2.FONT_HERSHEY_PLAIN, 0.9, (255, 255, 0))
        cv2.putText(img, f"{t}", (2, img.shape[0] - 4), cv2.FONT_HERSHEY_PLAIN, 0.9, (255, 0, 0))
        drawn.append(img)
    path = folder / f"{video}.detect.png"
    save_strip(drawn, path, every=1, columns=8)
    return [path]
