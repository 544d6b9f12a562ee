"""The issue's "Retrying and rerunning after a failure" drill, against a real `prefect server start` and real worker
processes (`prefect worker start --type process`, one per pool; the deployments of infra/prefect.yaml, made by
`prefect deploy --all` from a copy of the repository; each flow run a child process of its worker):

1. a flow run of `idtprior-pretrain/default` is created through the API as the UI's Run button creates it;
2. one chunk of decode fails once (``IDTPRIOR_FAULT``, set for the worker processes only);
3. the run ends Failed, the stage's other chunk is committed;
4. Retry through the API as the UI's Retry button does it;
5. the run completes; only the failed chunk computed anything (the other records untouched, their task runs Cached);
   the frames equal an uninterrupted computation's.
Then a stage whose inputs are missing fails at once, naming the missing stage; and (slow) an uninterrupted run gives
the same frames, and a stage rerun from its own deployment recomputes only what changed.
"""

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from server_process import FAULT, REPO, ServerProcess

from idtprior.storage import FrameStore, Workspace
from idtprior.storage.fingerprint import chunk_of
from idtprior.video.io import iter_frames, write_video
from idtprior_testutils import moving_square_frames

NUM_CHUNKS = 2
N_VIDEOS = 4  # clip000..clip003: two per chunk with 2 chunks
FAULT_STAGE, FAULT_CHUNK, _ = FAULT.split(":")
OTHER_CHUNK = next(chunk_of(f"clip{i:03d}", NUM_CHUNKS) for i in range(N_VIDEOS)
                   if chunk_of(f"clip{i:03d}", NUM_CHUNKS) != FAULT_CHUNK)
# decode on the GPU pool (as a configurable stage would be): the drill checks the pools' routing on the way
OVERRIDES = {"dask.n_workers": 0, "ingest.num_chunks": NUM_CHUNKS, "decode.short_side": 32, "pools.decode": "gpu"}
RUN_TIMEOUT_S = 150


def make_videos(folder: Path, n: int, seed0: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_video(folder / f"clip{i:03d}.mp4", moving_square_frames(24, seed=seed0 + i), fps=25,
                    options={"preset": "ultrafast"})


def created(ws: Workspace, stage: str) -> dict[str, float]:
    return {chunk: rec.created for chunk, rec in ws.records(stage).items()}


def stage_runs(server: ServerProcess, pipeline_run_id: str, since: str = "") -> dict[str, dict]:
    """The stage flow runs the pipeline run started (after ``since``, an ISO time), by flow name."""
    runs = [r for r in server.subflow_runs(pipeline_run_id) if (r["created"] or "") > since]
    flows = {f["id"]: f["name"] for f in server.post("/flows/filter", {"flows": {"id": {"any_": [
        r["flow_id"] for r in runs]}}})} if runs else {}
    out: dict[str, dict] = {}
    for r in sorted(runs, key=lambda r: r["created"]):
        out[flows[r["flow_id"]]] = r
    return out


def chunk_task_states(server: ServerProcess, flow_run_id: str, stage: str) -> dict[str, str]:
    """``<stage> <chunk>`` task run -> its final state name (Cached, Completed, Failed)."""
    return {t["name"].split(" ", 1)[1]: t["state_name"] for t in server.task_runs(flow_run_id)
            if t["name"].startswith(f"{stage} ")}


@pytest.fixture(scope="module")
def drill(prefect_server, pool_workers, tmp_path_factory):
    """A source of 4 tiny videos, the pipeline's deployment, the workers (their fault armed), and a dict the tests of
    this module share (the finished run, for the screenshots)."""
    root = tmp_path_factory.mktemp("drill")
    make_videos(root / "videos", N_VIDEOS)
    assert {chunk_of(f"clip{i:03d}", NUM_CHUNKS) for i in range(N_VIDEOS)} == {FAULT_CHUNK, OTHER_CHUNK}
    pipeline = prefect_server.deployment("idtprior-pretrain", "default")
    return root, list(pool_workers.values()), pipeline, {}


def pipeline_parameters(ws: Path, source: Path) -> dict:
    return {"config": "demo", "workspace": str(ws), "source": str(source), "stages": ["ingest", "decode"],
            "overrides": OVERRIDES}


@pytest.fixture(scope="module")
def retried(prefect_server, drill) -> dict:
    """The drill itself, once per module, whichever test asks first: a pipeline run created as the UI's Run button
    creates it fails in one decode chunk (the workers' armed fault), then is retried as the UI's Retry button does;
    what the server and the workspace showed after each attempt. Every test that continues the drill's workspace
    takes this fixture (none skips when run alone)."""
    root, workers, pipeline, shared = drill
    server = prefect_server
    ws_path = root / "ws"
    ws = Workspace(str(ws_path))
    seen: dict = {"root": root, "ws": ws}

    run = server.run_deployment_like_the_ui(pipeline, pipeline_parameters(ws_path, root / "videos"))
    seen["first"] = first = server.wait_flow_run(run["id"], RUN_TIMEOUT_S, workers)
    seen["before"] = {s: created(ws, s) for s in ("ingest", "decode")}
    seen["fault_spent"] = ws.fs.exists(ws.path("faults", f"{FAULT_STAGE}-{FAULT_CHUNK}"))
    seen["stages_1"] = stages_1 = stage_runs(server, run["id"])
    if "idtprior-decode" in stages_1:
        seen["decode_states_1"] = chunk_task_states(server, stages_1["idtprior-decode"]["id"], "decode")
        seen["decode_node"] = server.get(f"/task_runs/{stages_1['idtprior-decode']['parent_task_run_id']}")
    retried_at = server.flow_run(run["id"])["updated"]

    server.retry_like_the_ui(run["id"])
    seen["second"] = second = server.wait_flow_run(run["id"], RUN_TIMEOUT_S, workers, after_states=first["run_count"])
    seen["after"] = {s: created(ws, s) for s in ("ingest", "decode")}
    seen["stages_2"] = stage_runs(server, run["id"], since=retried_at)
    if second["state_type"] == "COMPLETED":
        shared["finished_run"] = second
    return seen


def test_failed_chunk_retry_from_the_ui_recomputes_only_that_chunk(prefect_server, retried):
    server = prefect_server
    first, second, ws, root = retried["first"], retried["second"], retried["ws"], retried["root"]
    assert first["state_type"] == "FAILED", (first["state_name"], first["state"]["message"])
    assert first["name"] == "ws: pretrain"
    # the stage's other chunk is committed; the failed one is not, and the fault is spent for this workspace
    before = retried["before"]
    assert set(before["ingest"]) == {FAULT_CHUNK, OTHER_CHUNK}
    assert set(before["decode"]) == {OTHER_CHUNK}
    assert retried["fault_spent"]
    stages_1 = retried["stages_1"]
    assert stages_1["idtprior-decode"]["state_type"] == "FAILED"
    assert retried["decode_states_1"][FAULT_CHUNK] == "Failed"
    # the run graph's edge: decode's node in the pipeline run (its parent task) takes ingest's run as input
    assert retried["decode_node"]["task_inputs"]["workspace"] == [{"input_type": "flow_run",
                                                                   "id": stages_1["idtprior-ingest"]["id"]}]

    assert second["state_type"] == "COMPLETED", (second["state_name"], second["state"]["message"])
    assert second["id"] == first["id"] and second["run_count"] > first["run_count"]
    after = retried["after"]
    # only the failed chunk computed anything: every other record is the first run's
    assert after["ingest"] == before["ingest"]
    assert after["decode"][OTHER_CHUNK] == before["decode"][OTHER_CHUNK]
    assert set(after["decode"]) == {FAULT_CHUNK, OTHER_CHUNK}
    stages_2 = retried["stages_2"]
    assert set(stages_2) == {"idtprior-ingest", "idtprior-decode"}, sorted(stages_2)
    assert set(chunk_task_states(server, stages_2["idtprior-ingest"]["id"], "ingest").values()) == {"Cached"}
    assert chunk_task_states(server, stages_2["idtprior-decode"]["id"], "decode") == {OTHER_CHUNK: "Cached",
                                                                                     FAULT_CHUNK: "Completed"}
    # each stage run went to its pool's deployment and was picked up by that pool's worker
    for flow, pool in (("idtprior-ingest", "cpu"), ("idtprior-decode", "gpu")):
        assert stages_2[flow]["work_pool_name"] == f"idtprior-{pool}", flow
        assert server.workers_of(stages_2[flow]["id"]) == {f"idtprior-{pool}-worker"}, flow
    assert server.workers_of(first["id"]) == {"idtprior-cpu-worker"}

    # the frames equal an uninterrupted computation's: each video decoded straight by the decode stage's reader
    store = FrameStore(ws)
    assert store.video_ids == [f"clip{i:03d}" for i in range(N_VIDEOS)]
    for vid in store.video_ids:
        want = np.stack(list(iter_frames(str(root / "videos" / f"{vid}.mp4"), short_side=OVERRIDES["decode.short_side"])))
        np.testing.assert_array_equal(store.array(vid)[:], want, err_msg=vid)


@pytest.mark.slow
def test_an_uninterrupted_run_gives_the_retried_runs_frames(prefect_server, drill, retried):
    """The same pipeline run on another workspace, never failing (its fault already spent: the marker the hook leaves
    in a workspace), gives the frames the retried run left."""
    root, workers, pipeline, shared = drill
    server = prefect_server
    ws = retried["ws"]
    assert set(created(ws, "decode")) == {FAULT_CHUNK, OTHER_CHUNK}, "needs the retry drill's workspace"
    ref_path = root / "ws-reference"
    ref = Workspace(str(ref_path))
    ref.write_bytes_atomic(ref.path("faults", f"{FAULT_STAGE}-{FAULT_CHUNK}"), b"spent before the run\n")
    clean = server.run_deployment_like_the_ui(pipeline, pipeline_parameters(ref_path, root / "videos"))
    clean = server.wait_flow_run(clean["id"], RUN_TIMEOUT_S, workers)
    assert clean["state_type"] == "COMPLETED", clean["state"]["message"]
    assert clean["run_count"] == 1
    shared["clean_run"] = clean
    got, want = FrameStore(ws), FrameStore(ref)
    assert got.video_ids == want.video_ids == [f"clip{i:03d}" for i in range(N_VIDEOS)]
    for vid in want.video_ids:
        np.testing.assert_array_equal(got.array(vid)[:], want.array(vid)[:], err_msg=vid)


@pytest.mark.slow
def test_stage_deployment_reruns_only_what_changed(prefect_server, drill):
    """A workspace and a source of its own (the drill's stay as they are for the other tests): the pipeline runs once
    (its fault spent beforehand), one video changes, and each stage's own deployment, given only the workspace,
    recomputes the changed video's chunk only."""
    root, workers, pipeline, _ = drill
    server = prefect_server
    source = root / "videos-rerun"
    shutil.copytree(root / "videos", source)
    ws_path = root / "ws-rerun"
    ws = Workspace(str(ws_path))
    ws.write_bytes_atomic(ws.path("faults", f"{FAULT_STAGE}-{FAULT_CHUNK}"), b"spent before the run\n")
    first = server.run_deployment_like_the_ui(pipeline, pipeline_parameters(ws_path, source))
    first = server.wait_flow_run(first["id"], RUN_TIMEOUT_S, workers)
    assert first["state_type"] == "COMPLETED", first["state"]["message"]
    assert set(created(ws, "decode")) == {FAULT_CHUNK, OTHER_CHUNK}
    before = {s: created(ws, s) for s in ("ingest", "decode")}
    frames_before = FrameStore(ws).array("clip002")[:]
    # one video of OTHER_CHUNK changes content
    changed = "clip001"
    assert chunk_of(changed, NUM_CHUNKS) == OTHER_CHUNK
    write_video(source / f"{changed}.mp4", moving_square_frames(24, seed=100), fps=25,
                options={"preset": "ultrafast"})

    # the stage deployments, with only a workspace: the config it was last run with is the workspace's own
    for stage in ("ingest", "decode"):
        dep = server.deployment(f"idtprior-{stage}", "cpu")
        run = server.run_deployment_like_the_ui(dep, {"workspace": str(ws_path)})
        run = server.wait_flow_run(run["id"], RUN_TIMEOUT_S, workers)
        assert run["state_type"] == "COMPLETED", (stage, run["state"]["message"])
        assert run["name"] == f"ws-rerun: {stage}"
        assert chunk_task_states(server, run["id"], stage) == {FAULT_CHUNK: "Cached", OTHER_CHUNK: "Completed"}
    after = {s: created(ws, s) for s in ("ingest", "decode")}
    for stage in ("ingest", "decode"):
        assert after[stage][FAULT_CHUNK] == before[stage][FAULT_CHUNK], stage
        assert after[stage][OTHER_CHUNK] > before[stage][OTHER_CHUNK], stage
    np.testing.assert_array_equal(FrameStore(ws).array("clip002")[:], frames_before)  # same chunk, unchanged video
    assert FrameStore(ws).array(changed).shape[0] == 24


def test_stage_deployment_without_its_inputs_fails_at_once_naming_the_stage(prefect_server, drill):
    root, workers, _, _ = drill
    server = prefect_server
    empty = root / "ws-empty"
    dep = server.deployment("idtprior-decode", "cpu")
    run = server.run_deployment_like_the_ui(dep, {"workspace": str(empty), "config": "demo",
                                                  "overrides": OVERRIDES})
    run = server.wait_flow_run(run["id"], RUN_TIMEOUT_S, workers)
    assert run["state_type"] == "FAILED"
    message = run["state"]["message"]
    assert "ingest" in message and "idtprior-ingest" in message, message
    assert "Traceback" not in message
    # nothing ran: no chunk task, nothing written for decode
    assert server.task_runs(run["id"]) == []
    assert Workspace(str(empty)).records("decode") == {}
    logs = server.logs(run["id"])
    assert "Traceback" not in logs, logs[-3000:]


SCREENSHOT = REPO / "scripts" / "ui_screenshot.sh"
DOCS = REPO / "docs"


def screenshot(url: str, out: Path) -> str:
    """Run scripts/ui_screenshot.sh on ``url``: check the PNG it writes, return the page's DOM as drawn."""
    dom = out.with_suffix(".html")
    proc = subprocess.run(["bash", str(SCREENSHOT), url, str(out), "1400x1000", "20000", str(dom)],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1400, 1000)
    html = dom.read_text()
    dom.unlink()
    return html


@pytest.mark.skipif(not shutil.which("chromium"), reason="no Chromium (Debian: apt-get install -y chromium; "
                    "`make install` does it where it runs as root)")
def test_ui_shows_the_run_form_and_a_finished_runs_graph(prefect_server, drill, retried, tmp_path):
    """scripts/ui_screenshot.sh in headless Chromium: the pipeline's custom run form (with the stage multi-select) and
    the drill's finished run (its graph of stage runs). Written to docs/ with IDTPRIOR_WRITE_DOCS=1 (the README's
    pictures). The graph is drawn on a canvas: the DOM shows the page around it, a person checks the picture."""
    _, _, pipeline, shared = drill
    assert "finished_run" in shared, retried["second"]["state"]["message"]
    out = DOCS if os.environ.get("IDTPRIOR_WRITE_DOCS") == "1" else tmp_path
    html = screenshot(f"{prefect_server.url}/v2/deployments/deployment/{pipeline['id']}/run", out / "ui-run-form.png")
    # the form the UI drew from the deployment's schema: every parameter's title, the stage multi-select's choices
    for name, prop in pipeline["parameter_openapi_schema"]["properties"].items():
        assert prop["title"] in html, f"run form: no field {prop['title']!r} ({name})"
    assert "idtprior-pretrain" in html
    # the graph of a run that never failed where the slow test made one (the picture of the README), else the
    # retried run's (both attempts' stage runs)
    run = shared.get("clean_run", shared["finished_run"])
    html = screenshot(f"{prefect_server.url}/v2/runs/flow-run/{run['id']}", out / "ui-run-graph.png")
    assert run["name"] in html and "Completed" in html


def test_a_pipeline_keeps_its_config_and_a_stage_runs_overrides_apply_to_that_run_only(prefect_server, drill,
                                                                                         retried):
    """Every stage run the pipeline started names the config the pipeline resolved, stored by content in the
    workspace; a stage run from its own deployment with overrides changes nothing of it (nor ``config.yaml``); a
    Retry of the pipeline's stage run afterwards reads the pipeline's config, not what ran in between."""
    from idtprior.runtime.runs import load_stored_config, remembered_config

    root, workers, _, shared = drill
    assert "finished_run" in shared, retried["second"]["state"]["message"]
    server = prefect_server
    ws = Workspace(str(root / "ws"))
    runs = server.subflow_runs(shared["finished_run"]["id"])  # both attempts' stage runs
    assert len(runs) == 4
    (stored,) = {r["parameters"]["config"] for r in runs}
    assert stored.startswith(ws.path("configs") + "/") and stored.endswith(".yaml")
    assert load_stored_config(stored) == remembered_config(ws.url)
    assert load_stored_config(stored).decode.short_side == OVERRIDES["decode.short_side"]

    # a decode run of its own, with an override: its frames, and nothing else
    single = server.run_deployment_like_the_ui(server.deployment("idtprior-decode", "cpu"), {
        "config": "", "workspace": str(root / "ws"), "overrides": {"decode.short_side": 24}})
    single = server.wait_flow_run(single["id"], RUN_TIMEOUT_S, workers)
    assert single["state_type"] == "COMPLETED", (single["state_name"], single["state"]["message"])
    assert FrameStore(ws).array("clip000").shape[1] == 24
    assert remembered_config(ws.url).decode.short_side == OVERRIDES["decode.short_side"]  # config.yaml unchanged

    # Retry of the pipeline's decode run: the pipeline's config, whatever ran in between
    flows = {f["id"]: f["name"] for f in server.post("/flows/filter", {})}
    decode_run = max((r for r in runs if flows[r["flow_id"]] == "idtprior-decode"), key=lambda r: r["created"])
    before = server.flow_run(decode_run["id"])["run_count"]
    server.retry_like_the_ui(decode_run["id"])
    again = server.wait_flow_run(decode_run["id"], RUN_TIMEOUT_S, workers, after_states=before)
    assert again["state_type"] == "COMPLETED", (again["state_name"], again["state"]["message"])
    assert FrameStore(ws).array("clip000").shape[1] == OVERRIDES["decode.short_side"]
