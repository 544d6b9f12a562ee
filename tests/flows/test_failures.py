"""Failures never poison later runs: a bad setting fails its stage before any video runs, a video that fails in a
later stage never leaves an earlier stage's plan, and reruns after a per-video failure recompute nothing."""

from pathlib import Path

import numpy as np
import pytest

from idtprior.config import PipelineConfig, parse_config
from idtprior.config.base import ConfigError
from idtprior.config.stages import IDTConfig
from idtprior.flows.pipeline import pretrain_pipeline, select_stages
from idtprior.storage import Workspace, file_fingerprint, read_manifest, statcache
from idtprior.video.idt.textformat import write_idt_text
from idtprior_testutils import write_moving_square_videos

STAGES_TO_CLUSTER = ["ingest", "decode", "idt", "fit_codebook", "encode", "cluster"]
TINY_TRAIN = {"width": 0.125, "embed_dim": 16, "clip_length": 4, "crop_size": 32, "batch_size": 4, "negatives": 8,
              "num_workers": 0, "accelerator": "cpu"}


def created(ws: Workspace, stage: str) -> dict[str, float]:
    return {c: r.created for c, r in ws.records(stage).items()}


make_videos = write_moving_square_videos


def idt_text_files(folder: Path, n: int, bad: int) -> None:
    """Reference-format IDT files for clip000..clipNNN (seeded random descriptors); clip ``bad``'s is not IDT text."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"clip{i:03d}.txt"
        if i == bad:
            path.write_text("this is not an IDT file\n")
            continue
        rows = rng.random((40, 436)).astype(np.float32)
        rows[:, 10:] += i % 2  # two planted kinds of video
        write_idt_text(path, rows)


def test_from_stage_keeps_the_config_stage_list():
    cfg = PipelineConfig(stages=("ingest", "decode", "idt", "fit_codebook", "encode", "cluster"))
    assert select_stages(cfg, from_stage="decode") == ["decode", "idt", "fit_codebook", "encode", "cluster"]
    assert select_stages(cfg, ["ingest", "decode", "detect"], from_stage="decode") == ["decode", "detect"]
    with pytest.raises(ConfigError, match=r"--from detect: not one of the selected stages"):
        select_stages(cfg, from_stage="detect")


@pytest.mark.parametrize("idt, words", [
    ({"track_length": 10}, r"track_length \(10\) must be a multiple of nt_cell \(3\)"),
    ({"track_length": 12}, r"track_length=12 gives 420 descriptor columns.*426"),
    ({"nxy_cell": 4}, r"nxy_cell=4 gives 1614 descriptor columns"),
    ({"max_side": 48, "patch_size": 64}, r"max_side \(48\) must be at least patch_size \(64\)"),
])
def test_settings_the_stages_would_refuse_are_refused_at_load_time(idt, words):
    with pytest.raises(ConfigError, match=words):
        parse_config({"idt": idt})


@pytest.mark.usefixtures("prefect_engine")
def test_a_bad_setting_fails_the_stage_before_any_video_and_the_fixed_run_keeps_every_video(tmp_path):
    make_videos(tmp_path / "videos", 6)
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode", "idt"],
        "ingest": {"source": str(tmp_path / "videos"), "num_chunks": 2}, "decode": {"short_side": 32},
        "idt": {"sample_videos": 3, "sample_rows": 50, "scale_num": 1}, "dask": {"n_workers": 0}})
    ws = Workspace(cfg.workspace)
    pretrain_pipeline(cfg, stages=["ingest", "decode"], progress=False)
    decoded = created(ws, "decode")
    # a setting that passed no validation (as from an older config or a caller that skips it) reaches the stage
    bad = cfg.model_copy(update={"idt": IDTConfig.model_construct(**{**cfg.idt.model_dump(), "track_length": 10})})
    with pytest.raises(ConfigError, match=r"idt: the settings are refused before any video runs: .*track_length "
                                          r"\(10\) must be a multiple of nt_cell \(3\)"):
        pretrain_pipeline(bad, stages=["idt"], progress=False)
    assert ws.records("idt") == {}  # no video ran, none is recorded as failed
    assert {r.status for r in read_manifest(ws)} == {"ok"} and not any(r.failed_in for r in read_manifest(ws))
    pretrain_pipeline(cfg, progress=False)  # the fixed setting: every video is still in decode's plan
    assert created(ws, "decode") == decoded
    assert sum(len(r.videos) for r in ws.records("decode").values()) == 6
    assert sum(r.n_ok for r in ws.records("idt").values()) == 3


@pytest.mark.usefixtures("prefect_engine")
def test_a_video_that_fails_in_encode_stays_planned_and_reruns_recompute_nothing(tmp_path, monkeypatch):
    reads: list[str] = []
    monkeypatch.setattr(statcache, "file_fingerprint", lambda p, full=False: reads.append(p) or file_fingerprint(p))
    monkeypatch.setattr(statcache, "RACY_SECONDS", 0.0)  # the files are seconds old; see test_statcache.py
    make_videos(tmp_path / "videos", 8, frames=20)  # IDT needs track_length + 1 frames
    idt_text_files(tmp_path / "idt-files", 8, bad=5)
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "stages": [*STAGES_TO_CLUSTER, "pretrain_ir"],
        "ingest": {"source": str(tmp_path / "videos"), "num_chunks": 3}, "decode": {"short_side": 32},
        "idt": {"sample_videos": 8, "sample_rows": 40, "scale_num": 1},
        "codebook": {"gmm_components": 2, "sketch_dim": 32, "gmm_iters": 5},
        "encode": {"idt_text_folder": str(tmp_path / "idt-files")}, "cluster": {"k": 2, "runs": 1},
        "pretrain": TINY_TRAIN, "pretrain_ir": {"epochs": 1}, "dask": {"n_workers": 0}})
    ws = Workspace(cfg.workspace)
    first = pretrain_pipeline(cfg, progress=False)
    assert first["encode"]["videos_failed"] == 1
    row = {r.video_id: r for r in read_manifest(ws)}["clip005"]
    # ingest's verdict stands; the later failure is listed with its stage and message
    assert row.status == "ok" and "encode" in row.failed_in.split(",") and "clip005" in row.error
    assert first["decode"]["videos_ok"] == 8 and first["pretrain_ir"]["videos_ok"] == 8
    stages = [*STAGES_TO_CLUSTER, "pretrain_ir"]
    done = {s: created(ws, s) for s in stages}
    reads.clear()
    for _ in range(2):  # twice: a key that flips between runs would show in either
        pretrain_pipeline(cfg, progress=False)
        assert {s: created(ws, s) for s in stages} == done
    assert reads == []  # neither the videos nor the imported IDT files are read again to plan a rerun
    assert "clip005" in ws.read_record("decode", row.chunk).videos  # still in decode's plan
