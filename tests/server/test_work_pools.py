"""CPU and GPU work pools: two `prefect worker start --type process` workers, one per pool, against a real server with
the deployments of infra/prefect.yaml. The pipeline deployment starts each stage as a run of that stage's deployment on
the stage's pool; here the training stage is sent to the GPU pool by the config's ``pools`` section (this machine has
no GPU: the stage trains on the CPU, 1 epoch, tiny) and every other stage to the CPU pool."""

import pytest
from idtprior_testutils import moving_square_frames

from idtprior.storage import Workspace, chunk_of
from idtprior.video.io import write_video

TINY_TRAINING = {"pretrain.width": 0.125, "pretrain.embed_dim": 16, "pretrain.clip_length": 4,
                 "pretrain.frame_step": 1, "pretrain.crop_size": 32, "pretrain.batch_size": 4,
                 "pretrain.negatives": 8, "pretrain.num_workers": 0, "pretrain.accelerator": "cpu",
                 "pretrain.train_split": None, "pretrain_ir.epochs": 1}
STAGES = ["ingest", "decode", "pretrain_ir"]


@pytest.mark.slow
def test_training_stage_runs_on_the_gpu_pool_worker(prefect_server, pool_workers, tmp_path):
    server = prefect_server
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(6):
        write_video(src / f"clip{i:03d}.mp4", moving_square_frames(12, seed=i), fps=25,
                    options={"preset": "ultrafast"})
    workers = list(pool_workers.values())

    pipeline = server.deployment("idtprior-pretrain", "default")
    # 3 chunks: the workers' armed fault (decode, chunk 1 of 2) cannot meet this workspace
    overrides = {"dask.n_workers": 0, "ingest.num_chunks": 3, "decode.short_side": 32, **TINY_TRAINING,
                 "pools.pretrain_ir": "gpu", "pools.ingest": "cpu", "pools.decode": "cpu"}
    run = server.run_deployment_like_the_ui(pipeline, {"config": "demo", "workspace": str(tmp_path / "ws"),
                                                       "source": str(src), "stages": STAGES, "overrides": overrides})
    run = server.wait_flow_run(run["id"], 420, workers)
    assert run["state_type"] == "COMPLETED", (run["state"]["message"], server.logs(run["id"])[-3000:])
    assert run["work_pool_name"] == "idtprior-cpu"

    children = server.subflow_runs(run["id"])
    flows = {f["id"]: f["name"] for f in server.post("/flows/filter", {"flows": {"id": {"any_": [
        r["flow_id"] for r in children]}}})}
    by_stage = {flows[r["flow_id"]]: r for r in children}
    assert set(by_stage) == {"idtprior-ingest", "idtprior-decode", "idtprior-pretrain-ir"}
    want_pool = {"idtprior-ingest": "cpu", "idtprior-decode": "cpu", "idtprior-pretrain-ir": "gpu"}
    for flow, r in by_stage.items():
        pool = want_pool[flow]
        assert r["state_type"] == "COMPLETED", (flow, r["state"]["message"])
        assert r["work_pool_name"] == f"idtprior-{pool}", flow
        # the deployment of the pool, and the worker of that pool picked it up
        dep = server.get(f"/deployments/{r['deployment_id']}")
        assert dep["name"] == pool, flow
        assert server.workers_of(r["id"]) == {f"idtprior-{pool}-worker"}, flow
    assert server.workers_of(run["id"]) == {"idtprior-cpu-worker"}
    ws = Workspace(str(tmp_path / "ws"))
    assert ws.read_record("pretrain_ir", "all") is not None
    assert set(ws.records("decode")) == {chunk_of(f"clip{i:03d}", 3) for i in range(6)}
