"""Progress artifacts on the real Prefect engine: one per stage run under the stage's ``progress`` key, made at flow
level and updated as the stage goes, ending at 100% with every chunk counted."""

import json
from pathlib import Path

import numpy as np
import pytest

from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.runtime.artifacts import artifact_key
from idtprior.storage import Workspace
from idtprior_testutils import knn_reference, write_moving_square_videos

pytestmark = pytest.mark.usefixtures("prefect_engine")


def artifacts(key: str) -> list:
    """Every artifact stored under ``key``, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        newest_first = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                             sort=ArtifactSort.CREATED_DESC)
    return newest_first[::-1]


def flow_run_logs(flow_run_id) -> list[tuple[int, str]]:
    """(level, message) of a flow run's own log lines (not its task runs'), oldest first (the log handler's queue
    sent to the server first)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [(log.level, log.message) for log in sorted(logs, key=lambda log: log.timestamp)
            if log.task_run_id is None]


def flow_name_of_run(flow_run_id) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow(client.read_flow_run(flow_run_id).flow_id).name


def tiny_config(tmp_path: Path, n: int = 7, **updates) -> PipelineConfig:
    src = tmp_path / "videos"
    write_moving_square_videos(src, n)
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode"],
        "ingest": {"source": str(src), "num_chunks": 3}, "decode": {"short_side": 32}, "dask": {"n_workers": 0}})
    return cfg.with_updates(**updates) if updates else cfg


def test_each_stage_run_leaves_a_progress_artifact_at_100_percent_with_every_chunk(tmp_path):
    cfg = tiny_config(tmp_path)
    ws = Workspace(cfg.workspace)
    pretrain_pipeline(cfg, progress=False)
    for stage in ("ingest", "decode"):
        n_chunks = len(ws.records(stage))
        assert n_chunks >= 2
        (art,) = artifacts(artifact_key(ws, stage, "progress"))
        assert art.type == "progress" and float(art.data) == 100.0
        assert art.description.startswith(f"{stage}: {n_chunks} of {n_chunks} chunks done"), art.description
        # made at flow level, by the stage's own flow run (a cached chunk task would not make it again)
        assert art.task_run_id is None and flow_name_of_run(art.flow_run_id) == f"idtprior-{stage}"

    # a rerun, every chunk cached: a new artifact under the same key, again at 100% (the history keeps both)
    pretrain_pipeline(cfg, stages=["decode"], progress=False)
    runs = artifacts(artifact_key(ws, "decode", "progress"))
    assert [float(a.data) for a in runs] == [100.0, 100.0] and runs[0].flow_run_id != runs[1].flow_run_id
    n_chunks = len(ws.records("decode"))
    assert runs[1].description.startswith(f"decode: {n_chunks} of {n_chunks} chunks done")


def test_a_failed_chunk_is_counted_as_failed_not_done(tmp_path, monkeypatch):
    """A decode chunk that fails (the drills' fault, once): the progress artifact says how many chunks finished, how
    many failed, and the videos of the committed ones; a failure is never counted as done. The failed stage's summary
    says it failed, what finished and why, and its failures table lists the failed chunk."""
    from idtprior.testing import FAULT_ENV

    cfg = tiny_config(tmp_path, n=12)
    ws = Workspace(cfg.workspace)
    pretrain_pipeline(cfg, stages=["ingest"], progress=False)
    chunks = sorted(ws.records("ingest"))
    n = len(chunks)
    assert n >= 2
    monkeypatch.setenv(FAULT_ENV, f"decode:{chunks[0]}:once")
    with pytest.raises(Exception, match=f"1 of {n} chunks failed"):
        pretrain_pipeline(cfg, stages=["decode"], progress=False)
    monkeypatch.delenv(FAULT_ENV)
    done = ws.records("decode")
    assert sorted(done) == chunks[1:]
    ok = sum(r.n_ok for r in done.values())
    assert 0 < ok < 12
    (art,) = artifacts(artifact_key(ws, "decode", "progress"))
    assert float(art.data) == 100.0  # every chunk ended
    assert art.description.startswith(f"decode: {n - 1} of {n} chunks done, 1 failed; {ok} videos ok, 0 failed; "
                                      "last: "), art.description
    # the failed stage still has its summary (what finished, what failed and why) and its failures table
    (summary,) = artifacts(artifact_key(ws, "decode", "summary"))
    assert summary.description == f"decode: FAILED, 1 of {n} chunks failed; {ok} videos ok, 0 failed"
    assert summary.data.startswith(f"## decode: FAILED\n\n**1 of {n} chunks failed**"), summary.data
    assert f"{n - 1} finished. First: `{chunks[0]}`: " in summary.data and "fault injected by IDTPRIOR_FAULT" in \
        summary.data
    assert f"| {n - 1} | {ok} | 0 | 0 |" in summary.data
    (failures,) = artifacts(artifact_key(ws, "decode", "failures"))
    rows = json.loads(failures.data)
    assert [r["video_id"] for r in rows] == [f"(chunk {chunks[0]}: every video of it)"]
    assert rows[0]["error"].startswith(f"the chunk failed: decode {chunks[0]}: fault injected by"), rows
    # a failure the pipeline understood: the stage's run ends with its one message and no traceback (the failed chunk's
    # task run keeps its own details); the traceback is there at debug level only
    lines = flow_run_logs(summary.flow_run_id)
    errors = [m for level, m in lines if level >= 40]
    fault = f"decode {chunks[0]}: fault injected by IDTPRIOR_FAULT='decode:{chunks[0]}:once'"
    assert len(errors) == 2 and errors[0].startswith(f"decode {chunks[0]} failed: {fault}"), errors  # as it ended
    assert errors[1].startswith(f"decode: 1 of {n} chunks failed; first: {chunks[0]}: {fault}"), errors  # the end
    assert not any("Traceback" in m or "Encountered exception" in m for level, m in lines if level > 10), lines

    # the rerun computes the failed chunk: all done, nothing failed
    pretrain_pipeline(cfg, stages=["decode"], progress=False)
    last = artifacts(artifact_key(ws, "decode", "progress"))[-1]
    assert last.description.startswith(f"decode: {n} of {n} chunks done; 12 videos ok, 0 failed; last: "), \
        last.description


def test_progress_artifact_keys_belong_to_their_workspace(tmp_path):
    """Two workspaces with one folder name do not share a progress history."""
    a = tiny_config(tmp_path / "a", n=2, stages=["ingest"])
    b = tiny_config(tmp_path / "b", n=2, stages=["ingest"])
    assert Path(a.workspace).name == Path(b.workspace).name
    key_a, key_b = (artifact_key(Workspace(c.workspace), "ingest", "progress") for c in (a, b))
    assert key_a != key_b
    pretrain_pipeline(a, progress=False)
    assert len(artifacts(key_a)) == 1 and artifacts(key_b) == []


TINY_TRAINING = {"width": 0.125, "embed_dim": 16, "clip_length": 4, "crop_size": 32, "batch_size": 4, "negatives": 8,
                 "num_workers": 0, "accelerator": "cpu"}


def test_a_training_stage_reports_each_epoch_in_a_table_and_a_progress_artifact(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("video_id,label\n" + "".join(f"clip{i:03d},{'ab'[i % 2]}\n" for i in range(8)))
    cfg = tiny_config(tmp_path, n=8, stages=["ingest", "decode", "pretrain_ir"], pretrain=TINY_TRAINING,
                      pretrain_ir={"epochs": 2})
    cfg = cfg.with_updates(ingest={"labels_file": str(labels)})
    ws = Workspace(cfg.workspace)
    pretrain_pipeline(cfg, progress=False)
    losses = ws.read_record("pretrain_ir", "all").videos["model"]["loss_per_epoch"]
    assert len(losses) == 2

    (table,) = artifacts(artifact_key(ws, "pretrain_ir", "epochs"))
    rows = json.loads(table.data)
    assert table.type == "table" and [r["epoch"] for r in rows] == [1, 2]
    assert [r["loss"] for r in rows] == losses  # the record's loss per epoch, row by row
    assert all(r["lr"] > 0 for r in rows)
    # the kNN monitor on the labels: the last epoch's, against the float64 reference on the bank the run saved (its
    # rows the 8 training videos in manifest order, labelled a, b, a, b, ...)
    info = ws.read_record("pretrain_ir", "all").videos["model"]
    bank = np.load(Path(info["run_dir"]) / "bank.npy")
    assert bank.shape[0] == 8
    want = knn_reference(bank, np.arange(8) % 2, k=cfg.pretrain.knn_k, tau=cfg.pretrain.tau)
    assert rows[-1]["knn_acc"] == pytest.approx(want, abs=1e-6)
    # the stage's progress artifact counts epochs (no chunk-count artifact beside it), made at flow level
    (progress,) = artifacts(artifact_key(ws, "pretrain_ir", "progress"))
    assert float(progress.data) == 100.0 and progress.description.startswith("pretrain_ir: 2 of 2 epochs done")
    assert table.task_run_id is None and progress.task_run_id is None
    assert flow_name_of_run(table.flow_run_id) == "idtprior-pretrain-ir"

    # cached on a rerun: the new run's table still holds every epoch (read from the run's logs)
    pretrain_pipeline(cfg, stages=["pretrain_ir"], progress=False)
    tables = artifacts(artifact_key(ws, "pretrain_ir", "epochs"))
    assert len(tables) == 2 and json.loads(tables[1].data) == rows
