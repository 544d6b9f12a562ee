"""Training-stage faults through the real Prefect engine: a non-finite loss fails the stage, naming where."""

from pathlib import Path

import pytest

from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.models.checkpoints import epochs_in_checkpoint
from idtprior.storage import Workspace
from idtprior.testing import FAULT_LOSS_ENV
from idtprior_testutils import write_moving_square_videos

pytestmark = pytest.mark.usefixtures("prefect_engine")

TINY = {"width": 0.125, "embed_dim": 16, "clip_length": 4, "crop_size": 32, "batch_size": 4, "negatives": 8,
        "num_workers": 0, "accelerator": "cpu"}


@pytest.mark.slow  # ingest, decode and two starts of a training stage on the engine: about 15 s on 2 CPU cores
def test_a_nan_loss_fails_the_stage_naming_run_epoch_and_step_and_a_rerun_resumes(tmp_path, monkeypatch):
    """8 videos, batch 4: 2 steps an epoch. A NaN at epoch 2, batch 2 fails pretrain_ir with a message naming the
    run folder, the epoch, the batch and the global step; no record is committed, last.ckpt holds epoch 1; once the
    cause is gone (the hook unset), the stage resumes from that checkpoint and trains epoch 2 only."""
    write_moving_square_videos(tmp_path / "videos", 8)
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "ingest": {"source": str(tmp_path / "videos"), "num_chunks": 1},
        "decode": {"short_side": 32}, "dask": {"n_workers": 0}, "pretrain": TINY, "pretrain_ir": {"epochs": 2}})
    pretrain_pipeline(cfg, stages=["ingest", "decode"], progress=False)
    runs = Path(cfg.workspace) / "runs" / "pretrain_ir"

    monkeypatch.setenv(FAULT_LOSS_ENV, "2:2")
    with pytest.raises(Exception) as info:
        pretrain_pipeline(cfg, stages=["pretrain_ir"], progress=False)
    run_dir = next(runs.iterdir())
    message = str(info.value)
    assert "pretrain_ir" in message and f"run {run_dir}: non-finite loss nan at epoch 2 of 2, batch 2 of 2, global " \
                                         f"step 4 (counted from 1)" in message, message
    assert Workspace(cfg.workspace).read_record("pretrain_ir", "all") is None
    assert epochs_in_checkpoint(run_dir / "checkpoints" / "last.ckpt") == 1

    monkeypatch.delenv(FAULT_LOSS_ENV)
    result = pretrain_pipeline(cfg, stages=["pretrain_ir"], progress=False)["pretrain_ir"]
    assert result["epochs"] == 2
    import csv

    logged = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path, newline="") as f:
            logged[path.parent.name] = sorted({int(r["epoch"]) for r in csv.DictReader(f) if r.get("loss_epoch")})
    assert logged == {"version_0": [0], "version_1": [1]}  # epoch 1 kept, not trained again
