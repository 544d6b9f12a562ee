"""The detect stage on the real Prefect engine: boxes per frame in the workspace, bb-file import and export, the IDT
stages (sample and fused encode) reading the boxes, and reruns that follow the boxes."""

import cv2
import numpy as np
import pytest

from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.stages.detect import read_video_boxes
from idtprior.storage import Workspace
from idtprior.video.idt.textformat import read_boxes, write_boxes
from idtprior.video.io import write_video

pytestmark = pytest.mark.usefixtures("prefect_engine")

N, H, W = 24, 48, 64


def pan_frames(seed: int) -> np.ndarray:
    """(N, H, W, 3) uint8: the camera pans 3 px a frame over a texture, a red square stays in view."""
    rng = np.random.default_rng(seed)
    world = cv2.GaussianBlur(rng.integers(0, 255, (H, W + 3 * N, 3), dtype=np.uint8), (3, 3), 0)
    frames = np.stack([world[:, 3 * t:3 * t + W] for t in range(N)])
    frames[:, 18:30, 26:38] = (250, 30, 30)
    return frames


def created(ws: Workspace, stage: str) -> dict[str, float]:
    return {c: r.created for c, r in ws.records(stage).items()}


def trajectories(ws: Workspace, stage: str) -> dict[str, int]:
    return {v: i["trajectories"] for r in ws.records(stage).values() for v, i in r.videos.items()}


def test_detect_stage_feeds_idt_and_encode_and_reruns_follow_the_boxes(tmp_path):
    from idtprior.cli import main

    src, bb = tmp_path / "videos", tmp_path / "bb"
    src.mkdir()
    bb.mkdir()
    for i in range(3):
        write_video(src / f"clip{i:03d}.mp4", pan_frames(i), fps=25, options={"preset": "ultrafast"})
    full = [np.array([[0, 0, W, H, 0.9]], np.float32)] * N  # a person box over the whole frame: no camera matches
    write_boxes(bb / "clip000.bb", full)  # boxes computed elsewhere, in the reference release's format
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "ingest": {"source": str(src), "num_chunks": 2},
        "dask": {"n_workers": 0}, "idt": {"sample_videos": 3, "sample_rows": 1000},
        "codebook": {"gmm_components": 4, "sketch_dim": 32, "gmm_iters": 5}})
    ws = Workspace(cfg.workspace)
    idt_stages = ["idt", "fit_codebook", "encode"]

    pretrain_pipeline(cfg, stages=["ingest", *idt_stages], progress=False)  # no detect stage: no boxes
    plain = {s: trajectories(ws, s) for s in ("idt", "encode")}
    first = {s: created(ws, s) for s in idt_stages}

    imported = cfg.with_updates(detect={"bb_folder": str(bb)})
    result = pretrain_pipeline(imported, stages=["detect", *idt_stages], progress=False)
    assert result["detect"]["videos_ok"] == 3
    assert result["detect"]["frames_with_person"] == pytest.approx(1 / 3, abs=1e-4)  # clip000's 24 of 72 frames
    stored = read_video_boxes(ws, "clip000")
    assert len(stored) == N and all(np.array_equal(a, b) for a, b in zip(stored, full))
    assert all(len(b) == 0 for b in read_video_boxes(ws, "clip001"))
    for stage in ("idt", "encode"):  # the boxes reached IDT: camera motion is no longer removed in clip000 only
        boxed = trajectories(ws, stage)
        assert boxed["clip000"] > 1.5 * plain[stage]["clip000"], (stage, boxed, plain[stage])
        assert boxed["clip001"] == plain[stage]["clip001"] and boxed["clip002"] == plain[stage]["clip002"]
    done = {s: created(ws, s) for s in ["detect", *idt_stages]}
    assert all(done[s][c] != first[s][c] for s in ("idt", "encode") for c in first[s])

    pretrain_pipeline(imported, stages=["detect", *idt_stages], progress=False)  # same boxes: nothing recomputed
    assert {s: created(ws, s) for s in done} == done

    assert main(["export-boxes", cfg.workspace, str(tmp_path / "out"), "--videos", "clip000,clip001"]) == 0
    exported = read_boxes(tmp_path / "out" / "clip000.bb")
    assert sorted(exported) == list(range(N)) and all(np.allclose(exported[t], full[t]) for t in range(N))
    assert all(len(b) == 0 for b in read_boxes(tmp_path / "out" / "clip001.bb").values())

    assert main(["inspect", cfg.workspace, "detect", "clip000", "-o", str(tmp_path / "out")]) == 0
    strip = cv2.imread(str(tmp_path / "out" / "clip000.detect.png"))
    assert strip.shape == (2 * H, 8 * W, 3) and (strip[..., 1] > 200).any()  # 16 frames, green boxes drawn

    detected = cfg.with_updates(detect={"backend": "hog", "every": 4})  # other boxes: detect and idt rerun
    pretrain_pipeline(detected, stages=["detect", "idt"], progress=False)
    after = {s: created(ws, s) for s in done}
    for stage in ("detect", "idt"):
        assert all(after[stage][c] != t for c, t in done[stage].items()), stage
