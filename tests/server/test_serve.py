"""`idtprior serve` on one machine, as the README's "From the Prefect UI" has it: `prefect server start`, then
`idtprior serve`, then Run in the UI. A server of its own (serve registers the same deployment names without pools,
which would take the session server's pool deployments away from the workers)."""

import time

import pytest
from idtprior_testutils import moving_square_frames
from server_process import BIN, Proc, ServerProcess, free_port

from idtprior.config import STAGES
from idtprior.storage import FrameStore, Workspace
from idtprior.video.io import write_video


@pytest.mark.slow
def test_serve_registers_every_deployment_and_runs_the_pipeline(tmp_path):
    server = ServerProcess(tmp_path / "prefect-home", free_port())
    server.home.mkdir()
    server.start()
    serve = None
    try:
        src = tmp_path / "videos"
        src.mkdir()
        for i in range(3):
            write_video(src / f"clip{i:03d}.mp4", moving_square_frames(12, seed=i), fps=25,
                        options={"preset": "ultrafast"})
        serve = Proc([str(BIN / "idtprior"), "serve"], tmp_path / "idtprior-serve.log", server.env())
        want = {("idtprior-pretrain", "default")}
        want |= {(f"idtprior-{s.replace('_', '-')}", pool) for s in STAGES for pool in ("cpu", "gpu")}
        deadline = time.monotonic() + 120
        while True:
            flows = {f["id"]: f["name"] for f in server.post("/flows/filter", {"limit": 200})}
            got = {(flows[d["flow_id"]], d["name"]): d for d in server.post("/deployments/filter", {"limit": 200})}
            if set(got) >= want:
                break
            assert serve.alive() and time.monotonic() < deadline, (sorted(want - set(got)), serve.log.read_text())
            time.sleep(1)
        assert set(got) == want
        assert {d["work_pool_name"] for d in got.values()} == {None}  # served: no pool, this process runs them

        pipeline = got[("idtprior-pretrain", "default")]
        run = server.run_deployment_like_the_ui(pipeline, {
            "config": "demo", "workspace": str(tmp_path / "ws"), "source": str(src), "stages": ["ingest", "decode"],
            "overrides": {"dask.n_workers": 0, "ingest.num_chunks": 3, "decode.short_side": 32}})
        run = server.wait_flow_run(run["id"], 240, [serve])
        assert run["state_type"] == "COMPLETED", (run["state"]["message"], serve.log.read_text()[-3000:])
        assert run["name"] == "ws: pretrain"
        children = sorted(server.subflow_runs(run["id"]), key=lambda r: r["created"])
        assert [(r["name"], r["state_type"]) for r in children] == [("ws: ingest", "COMPLETED"),
                                                                    ("ws: decode", "COMPLETED")]
        assert FrameStore(Workspace(str(tmp_path / "ws"))).video_ids == ["clip000", "clip001", "clip002"]
    finally:
        if serve is not None:
            serve.stop()
        server.stop()
