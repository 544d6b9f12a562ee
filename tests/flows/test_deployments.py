"""The UI's flows and deployments: the run forms as the server gets them, overrides checked before any stage, the config
a workspace remembers, the work pool of each stage, run names and artifact keys per workspace, the run graph as the
stage chain (through the API's task_inputs), and a missing prerequisite as one message."""

import asyncio
from pathlib import Path

import numpy as np
import pytest
import yaml

from idtprior.config import STAGES, PipelineConfig, load_config
from idtprior.config.base import ConfigError
from idtprior.flows.deployments import FROM_FIRST, STAGE_UI_FLOWS, deployments, pretrain_ui, stage_pool
from idtprior.presets import PRESETS, apply_overrides
from idtprior.runtime.artifacts import artifact_key
from idtprior.runtime.runs import CONFIG_FILE, remembered_config
from idtprior.storage import FrameStore, Workspace
from idtprior.video.idt.textformat import write_idt_text
from idtprior.video.io import write_video
from idtprior_testutils import moving_square_frames

CHAIN = ["ingest", "decode", "idt", "fit_codebook", "encode", "cluster"]


def make_videos(folder: Path, n: int, frames: int = 12) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_video(folder / f"clip{i:03d}.mp4", moving_square_frames(frames, seed=i), fps=25,
                    options={"preset": "ultrafast"})


def idt_text_files(folder: Path, n: int) -> None:
    """Reference-format IDT rows for clip000..: the idt and encode stages read these instead of running IDT."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        rows = rng.random((40, 436)).astype(np.float32)
        rows[:, 10:] += i % 2
        write_idt_text(folder / f"clip{i:03d}.txt", rows)


def tiny_yaml(tmp_path: Path, n: int = 4) -> Path:
    """A YAML config of a tiny workspace (the stages through cluster, in seconds) and its inputs."""
    make_videos(tmp_path / "videos", n)
    idt_text_files(tmp_path / "idt-files", n)
    data = {"workspace": str(tmp_path / "ws"), "stages": CHAIN,
            "ingest": {"source": str(tmp_path / "videos"), "num_chunks": 2}, "decode": {"short_side": 32},
            "idt": {"sample_videos": n, "sample_rows": 40, "scale_num": 1},
            "codebook": {"gmm_components": 2, "sketch_dim": 32, "gmm_iters": 5},
            "encode": {"idt_text_folder": str(tmp_path / "idt-files")}, "cluster": {"k": 2, "runs": 1},
            "dask": {"n_workers": 0}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------------------------ no engine needed
def _schema(flow_obj) -> dict:
    # exactly what RunnerDeployment sends to the server when it registers (its `_apply`)
    return flow_obj.to_deployment(name="probe")._parameter_openapi_schema.model_dump(exclude_unset=True)


def test_the_pipeline_form_is_small_typed_and_runs_with_its_defaults():
    schema = _schema(pretrain_ui)
    props = schema["properties"]
    assert list(props) == ["config", "workspace", "source", "video_root", "stages", "from_stage", "overrides",
                           "dask_address", "retry_failed"]
    assert schema["definitions"]["RetryFailed"]["enum"] == ["no", "retryable", "all"]
    assert props["retry_failed"]["default"] == "no"  # recorded failures are tried again only when asked
    assert schema.get("required", []) == []  # Quick run: every field has a default
    assert props["config"]["default"] == "demo" and "demo" in PRESETS and "kinetics400" in PRESETS
    assert props["overrides"]["default"] == {} and props["overrides"]["type"] == "object"
    # the stages are an enum generated from STAGES: a multi-select of exactly the stages that exist
    assert schema["definitions"]["StageName"]["enum"] == list(STAGES)
    ref = {"$ref": "#/definitions/StageName"}
    assert props["stages"]["items"] == ref and props["stages"]["type"] == "array" and props["stages"]["default"] == []
    # "From stage": a plain select (no "StageName | None" toggle), the first selected stage by default
    assert props["from_stage"]["$ref"] == "#/definitions/FromStage"
    assert "anyOf" not in props["from_stage"] and props["from_stage"]["default"] == FROM_FIRST
    assert schema["definitions"]["FromStage"]["enum"] == [FROM_FIRST, *STAGES]
    # text fields are plain strings ("" = the config's): the UI draws a text box, not a str/None toggle
    for name in ("workspace", "source", "video_root", "dask_address"):
        assert props[name]["type"] == "string" and props[name]["default"] == "", (name, props[name])
    for name, prop in props.items():  # a readable title and a description on every field
        assert prop["title"][0].isupper() and prop["title"] != name and len(prop["description"]) > 20, (name, prop)


def test_each_stage_form_defaults_to_the_workspace_config():
    for stage, flow_obj in STAGE_UI_FLOWS.items():
        assert flow_obj.name == "idtprior-" + stage.replace("_", "-")
        schema = _schema(flow_obj)
        assert list(schema["properties"]) == ["config", "workspace", "source", "video_root", "overrides",
                                              "dask_address"]
        assert schema.get("required", []) == [] and schema["properties"]["config"]["default"] == ""
        assert "config.yaml" in schema["properties"]["config"]["description"]


def test_flows_are_named_with_the_project_prefix():
    from idtprior.flows.pipeline import FLOWS, pretrain_pipeline

    assert pretrain_pipeline.name == pretrain_ui.name == "idtprior-pretrain"
    assert [FLOWS[s].name for s in STAGES] == [STAGE_UI_FLOWS[s].name for s in STAGES] == [
        "idtprior-ingest", "idtprior-decode", "idtprior-detect", "idtprior-idt", "idtprior-fit-codebook",
        "idtprior-encode", "idtprior-cluster", "idtprior-pretrain-ir", "idtprior-pretrain-la", "idtprior-tune-joint",
        "idtprior-pretrain-la-bank", "idtprior-supervised", "idtprior-evaluate"]


def test_deployments_one_pipeline_and_one_per_stage_and_pool():
    deps = deployments()
    names = [(d.flow_name, d.name) for d in deps]
    want = [("idtprior-pretrain", "default")] + [("idtprior-" + s.replace("_", "-"), p) for s in STAGES
                                                  for p in ("cpu", "gpu")]
    assert names == want
    assert {d.entrypoint for d in deps} == {"idtprior.flows.deployments.pretrain_ui"} | {
        f"idtprior.flows.deployments.{s}_ui" for s in STAGES}
    pooled = deployments(work_pools=True)
    assert [d.work_pool_name for d in pooled] == ["idtprior-cpu"] + ["idtprior-cpu", "idtprior-gpu"] * len(STAGES)


def test_serve_refuses_a_limit_that_would_deadlock_a_pipeline_run(capsys):
    from idtprior.cli import main

    assert main(["serve", "--limit", "1"]) == 2
    assert "--limit 1: a pipeline run waits for its stage runs" in capsys.readouterr().err


def test_overrides_name_the_key_and_the_value():
    cfg = PipelineConfig()
    got = apply_overrides(cfg, {"pretrain_la.epochs": 5, "ingest.num_chunks": "16", "stages": ["ingest"]})
    assert (got.pretrain_la.epochs, got.ingest.num_chunks, got.stages) == (5, 16, ("ingest",))
    assert got.pretrain_ir == cfg.pretrain_ir  # nothing else moved
    with pytest.raises(ConfigError, match=r"unknown key 'pretrain_la\.epoch' \(value 5\): pretrain_la has no "
                                          r"'epoch'; it has .*epochs"):
        apply_overrides(cfg, {"pretrain_la.epoch": 5})
    with pytest.raises(ConfigError, match=r"overrides: key 'pretrain_la\.epochs': .*greater than or equal to 1 "
                                          r"\(value 0\)"):
        apply_overrides(cfg, {"pretrain_la.epochs": 0})
    with pytest.raises(ConfigError, match=r"key 'decode\.short_side': .*integer.* \(value 'big'\)"):
        apply_overrides(cfg, {"decode.short_side": "big"})
    with pytest.raises(ConfigError, match=r"key 'workspace\.x' \(value 1\): workspace is a setting, not a section"):
        apply_overrides(cfg, {"workspace.x": 1})
    with pytest.raises(ConfigError, match=r"unknown key 'nosuch\.k' \(value 2\): the config has no 'nosuch'"):
        apply_overrides(cfg, {"nosuch.k": 2})


def test_the_demo_preset_renders_its_data_next_to_the_workspace_only_for_a_run_that_ingests(tmp_path):
    from idtprior.flows.deployments import resolve_config

    small = {"demo.videos_per_class": 1, "demo.frames": 16, "pretrain_la.epochs": 2}
    planned = resolve_config("demo", workspace=str(tmp_path / "ws"), overrides=small)
    data = tmp_path / "demo-data"
    assert planned.ingest.source == str(data / "splits" / "trainlist01.txt") and not data.exists()
    cfg = resolve_config("demo", workspace=str(tmp_path / "ws"), overrides=small, render_demo=True)
    assert cfg == planned and cfg.workspace == str(tmp_path / "ws") and cfg.pretrain_la.epochs == 2
    assert len(list((data / "videos").rglob("*.mp4"))) == 6  # the overrides' demo settings: 6 classes x 1
    # a source of one's own: the demo preset's settings, nothing rendered
    own = resolve_config("demo", workspace=str(tmp_path / "ws2"), source=str(tmp_path / "mine"))
    assert own.ingest.source == str(tmp_path / "mine") and own.ingest.video_root is None


def test_stage_pool_auto_rule_and_per_stage_choice():
    cfg = PipelineConfig()
    assert set(type(cfg.pools).model_fields) == set(STAGES)  # one choice per stage, generated from STAGES
    auto = {s: stage_pool(cfg, s) for s in STAGES}
    assert auto == {"ingest": "cpu", "decode": "cpu", "detect": "cpu", "idt": "cpu", "fit_codebook": "cpu",
                    "encode": "cpu", "cluster": "cpu", "pretrain_ir": "gpu", "pretrain_la": "gpu",
                    "tune_joint": "gpu", "pretrain_la_bank": "gpu", "supervised": "gpu", "evaluate": "gpu"}
    assert stage_pool(cfg.with_updates(detect={"backend": "maskrcnn"}), "detect") == "gpu"
    torch_idt = cfg.with_updates(idt={"backend": "torch"})  # the batched extractor, for a GPU: idt and encode there
    assert {s: stage_pool(torch_idt, s) for s in ("idt", "encode", "fit_codebook")} == {
        "idt": "gpu", "encode": "gpu", "fit_codebook": "cpu"}
    imported = torch_idt.with_updates(encode={"idt_text_folder": "/rows"})  # rows read from text files: CPU tasks
    assert (stage_pool(imported, "idt"), stage_pool(imported, "encode")) == ("cpu", "cpu")
    chosen = apply_overrides(cfg, {"pools.fit_codebook": "gpu", "pools.pretrain_ir": "cpu"})
    assert (stage_pool(chosen, "fit_codebook"), stage_pool(chosen, "pretrain_ir")) == ("gpu", "cpu")
    with pytest.raises(ConfigError, match=r"pools\.encode.*\(value 'tpu'\)"):
        apply_overrides(cfg, {"pools.encode": "tpu"})


def test_artifact_keys_are_per_workspace_and_follow_prefects_rule(tmp_path):
    a, b = tmp_path / "a" / "My_WS", tmp_path / "b" / "My_WS"
    key = artifact_key(str(a), "fit_codebook", "summary")
    assert key.startswith("idtprior-my-ws-") and key.endswith("-fit-codebook-summary")
    assert set(key) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") and "--" not in key
    assert artifact_key(Workspace(str(a)), "fit_codebook", "summary") == key  # however the workspace is given
    assert artifact_key(str(b), "fit_codebook", "summary") != key  # same folder name elsewhere: another key


# ------------------------------------------------------------------------------------------------ the real engine
def _read(coro_fn):
    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            return await coro_fn(client)

    return asyncio.run(go())


def _flow_runs(parent_run_id):
    """The stage flow runs under a pipeline run, oldest first, with their parent task runs and flows' names."""
    from prefect.client.schemas.filters import FlowRunFilter, TaskRunFilter, TaskRunFilterFlowRunId

    async def read(client):
        tasks = await client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[parent_run_id])))
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_task_run_id={"any_": [t.id for t in tasks]}))
        flows = {r.flow_id: (await client.read_flow(r.flow_id)).name for r in runs}
        return tasks, runs, flows

    tasks, runs, flows = _read(read)
    runs = sorted(runs, key=lambda r: r.start_time)
    return {t.id: t for t in tasks}, runs, flows


@pytest.mark.usefixtures("prefect_engine")
def test_pipeline_graph_is_the_stage_chain_with_names_and_keys_of_the_workspace(tmp_path):
    from prefect.client.schemas.objects import FlowRunResult

    path = tiny_yaml(tmp_path)
    state = pretrain_ui(config=str(path), workspace=str(tmp_path / "ws"), return_state=True)
    assert state.is_completed(), state.message
    top = _read(lambda c: c.read_flow_run(state.state_details.flow_run_id))
    assert top.name == "ws: pretrain"
    tasks, runs, flows = _flow_runs(top.id)
    assert [flows[r.flow_id] for r in runs] == ["idtprior-" + s.replace("_", "-") for s in CHAIN]
    assert [r.name for r in runs] == [f"ws: {s}" for s in CHAIN]
    # each stage's parent task depends on exactly the previous stage's run, nothing else (no edge from the idt run
    # through the config's "idt" strings, none from the config at all)
    for prev, run in zip([None, *runs], runs):
        inputs = {i for values in tasks[run.parent_task_run_id].task_inputs.values() for i in values}
        assert inputs == ({FlowRunResult(id=prev.id)} if prev else set()), (run.name, inputs)
    # artifacts keyed by the workspace
    ws = Workspace(str(tmp_path / "ws"))

    async def keys(client):
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs])))
        return {a.key for a in arts if a.key}

    assert {artifact_key(ws, s, "summary") for s in CHAIN} <= _read(keys)
    # the workspace remembers the config it ran with
    assert remembered_config(ws.url) == load_config(path).with_updates(workspace=ws.url)


@pytest.mark.usefixtures("prefect_engine")
def test_bad_override_fails_the_run_at_once_naming_key_and_value(tmp_path):
    path = tiny_yaml(tmp_path, n=1)
    state = pretrain_ui(config=str(path), overrides={"decode.short_side": 4}, return_state=True)
    assert state.is_failed()
    assert "key 'decode.short_side'" in state.message and "(value 4)" in state.message, state.message
    assert not (tmp_path / "ws").exists()  # no stage ran


@pytest.mark.usefixtures("prefect_engine")
def test_a_stage_run_defaults_to_the_config_the_workspace_last_ran_with(tmp_path):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    path = tiny_yaml(tmp_path, n=2)
    ws = str(tmp_path / "ws")
    never = STAGE_UI_FLOWS["decode"](workspace=str(tmp_path / "never-run"), return_state=True)
    assert never.is_failed() and f"has no {CONFIG_FILE}" in never.message

    assert pretrain_ui(config=str(path), stages=["ingest"], return_state=True).is_completed()
    # no config given: decode runs with the workspace's (short side 32), not a preset's (128)
    assert STAGE_UI_FLOWS["decode"](workspace=ws, return_state=True).is_completed()
    assert FrameStore(Workspace(ws)).read_clip("clip000", 0, 1).shape == (1, 32, 43, 3)
    # encode before fit_codebook: one message naming the missing stage and how to run it; no result of the failed
    # run goes to Prefect's default storage
    default_storage = tmp_path / "default-storage"
    results = tmp_path / "ws" / "results"
    before = set(results.iterdir())
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: str(default_storage)}):
        state = STAGE_UI_FLOWS["encode"](workspace=ws, return_state=True)
    assert state.is_failed()
    assert state.message == (f"encode: workspace {Workspace(ws).url}: no codebook; run the fit_codebook stage first "
                             "(`idtprior run CONFIG --stages fit_codebook`, or the idtprior-fit-codebook deployment "
                             "in the Prefect UI)")
    assert not default_storage.exists() or not any(default_storage.rglob("*"))
    assert set(results.iterdir()) - before  # the failed run's result (its exception) is in the workspace


@pytest.mark.usefixtures("prefect_engine")
def test_cli_missing_prerequisite_prints_one_line_and_no_traceback(tmp_path, capfd):
    from idtprior.cli import main

    path = tiny_yaml(tmp_path, n=2)
    assert main(["run", str(path), "--stages", "ingest"]) == 0
    capfd.readouterr()
    assert main(["run", str(path), "--stages", "encode"]) == 2
    out, err = capfd.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("idtprior run: error:")]
    assert errors == [(f"idtprior run: error: workspace {Workspace(str(tmp_path / 'ws')).url}: no codebook; run the "
                       "fit_codebook stage first (`idtprior run CONFIG --stages fit_codebook`, or the "
                       "idtprior-fit-codebook deployment in the Prefect UI)")]
    assert "Traceback" not in out + err


def test_a_stored_config_is_read_back_and_an_edited_one_is_refused_naming_it(tmp_path):
    import re

    from idtprior.flows.deployments import resolve_config
    from idtprior.runtime.runs import load_stored_config, store_config

    cfg = PipelineConfig().with_updates(workspace=str(tmp_path / "ws"), cluster={"k": 7})
    ref = store_config(cfg)
    assert Path(ref).parent == tmp_path / "ws" / "configs" and store_config(cfg) == ref  # by content: written once
    assert load_stored_config(ref) == cfg.with_updates(workspace=Workspace(cfg.workspace).url)
    assert resolve_config(ref).cluster.k == 7
    Path(ref).write_text(Path(ref).read_text().replace("k: 7", "k: 8"))
    with pytest.raises(ConfigError, match=rf"stored config {re.escape(ref)}: its content hashes to [0-9a-f]{{16}}, "
                                          r"not to its name: it was edited after it was stored"):
        resolve_config(ref)
    Path(ref).unlink()
    with pytest.raises(ConfigError, match=r"no such file"):
        load_stored_config(ref)


@pytest.mark.usefixtures("prefect_engine")
def test_a_run_name_typed_in_the_form_is_kept_and_a_generated_one_replaced(tmp_path):
    """The Run Name a user types when starting a deployment run stays the run's name; a run nobody named (Prefect's
    two random words) is named ``<workspace folder>: <stage>``."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from idtprior.runtime.runs import run_name

    @flow(name="idtprior-probe", flow_run_name=run_name("decode"))
    def probe(workspace: str = "") -> int:
        return 1

    params = {"workspace": str(tmp_path / "k400-a")}
    with get_client(sync_client=True) as client:
        typed = client.create_flow_run(probe, name="lr sweep 3", parameters=params)
        unnamed = client.create_flow_run(probe, parameters=params)
        generated = unnamed.name
        for run in (typed, unnamed):
            run_flow(probe, flow_run=run, parameters=params)
        assert client.read_flow_run(typed.id).name == "lr sweep 3"
        assert client.read_flow_run(unnamed.id).name == "k400-a: decode" != generated


def test_the_engines_exit_traceback_is_dropped_for_understood_failures_only():
    """A deployment run that ends with a failure the pipeline understood has logged its one line already: Prefect's
    "Engine execution exited with unexpected exception" and its traceback are dropped for it, kept for anything else
    (a bug)."""
    import logging
    import sys

    from idtprior.runtime.errors import StageFailed
    from idtprior.runtime.runs import ENGINE_EXIT, UnderstoodFailures

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            info = sys.exc_info()
        return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, ENGINE_EXIT, (), info)

    keep = UnderstoodFailures().filter
    assert not keep(record(StageFailed("decode: 1 of 2 chunks failed; first: ...")))
    assert not keep(record(ConfigError("cluster: no sketches: run the encode stage first")))
    assert keep(record(TypeError("a bug: 'NoneType' object is not subscriptable")))
    other = record(StageFailed("x"))
    other.msg = "Encountered exception during execution: %r"
    assert keep(other)
    assert any(isinstance(f, UnderstoodFailures) for f in logging.getLogger("prefect.flow_runs").filters)
