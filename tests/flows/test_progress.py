"""Progress artifacts on the real Prefect engine: one per stage run under the stage's ``progress`` key, made at flow
level and updated as the stage goes, ending at 100% with every chunk counted."""

from pathlib import Path

import pytest

from idtprior_testutils import moving_square_frames
from idtprior.config import PipelineConfig
from idtprior.flows.common import artifact_key
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.storage import Workspace
from idtprior.video.io import write_video

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


def flow_name_of_run(flow_run_id) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow(client.read_flow_run(flow_run_id).flow_id).name


def tiny_config(tmp_path: Path, n: int = 7, **updates) -> PipelineConfig:
    src = tmp_path / "videos"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_video(src / f"clip{i:03d}.mp4", moving_square_frames(12, seed=i), fps=25,
                    options={"preset": "ultrafast"})
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


def test_progress_artifact_keys_belong_to_their_workspace(tmp_path):
    """Two workspaces with one folder name do not share a progress history."""
    a = tiny_config(tmp_path / "a", n=2, stages=["ingest"])
    b = tiny_config(tmp_path / "b", n=2, stages=["ingest"])
    assert Path(a.workspace).name == Path(b.workspace).name
    key_a, key_b = (artifact_key(Workspace(c.workspace), "ingest", "progress") for c in (a, b))
    assert key_a != key_b
    pretrain_pipeline(a, progress=False)
    assert len(artifacts(key_a)) == 1 and artifacts(key_b) == []
