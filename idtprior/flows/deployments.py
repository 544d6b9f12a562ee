"""The flows the Prefect UI launches, and their deployments.

``pretrain_ui`` (flow ``idtprior-pretrain``) runs the pipeline and ``<stage>_ui`` (flow ``idtprior-<stage>``) one stage
on a workspace, each with a small typed form: a preset or YAML path, the workspace, the source, the stages as an enum
(a multi-select), dotted overrides validated before any stage runs. Run from a deployment, the pipeline starts each
stage as a run of that stage's deployment on the stage's work pool (``stage_pool``), so a failed stage has its own Retry
in the UI; called in a process (the CLI, tests), stages run in-process as subflows.

``deployments()`` builds the list: ``idtprior-pretrain/default`` and ``idtprior-<stage>/cpu``, ``idtprior-<stage>/gpu``;
``idtprior serve`` serves them all in one process (``serve``); ``infra/prefect.yaml`` registers the same flows by
entrypoint (``idtprior/flows/deployments.py:pretrain_ui``, ``...:<stage>_ui``) on the work pools ``idtprior-cpu`` and
``idtprior-gpu``.

No ``from __future__ import annotations`` here: it breaks pydantic parameters under ``flow.serve()``.
"""

from enum import Enum
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.context import FlowRunContext
from prefect.logging import get_run_logger
from pydantic import Field

from idtprior.config import STAGES, PipelineConfig, load_config
from idtprior.config.base import ConfigError
from idtprior.config.training import TRAIN_STAGES
from idtprior.flows.pipeline import pipeline_failed, run_stages, select_stages
from idtprior.presets import PRESETS, apply_overrides, config_path, demo_inputs, ensure_demo_data, with_inputs
from idtprior.runtime.errors import StageFailed
from idtprior.runtime.records import reopen_failures
from idtprior.runtime.runs import (CONFIGS_DIR, CONFIG_FILE, flow_name, fresh_copy, is_stored_config,
                                   load_stored_config, remember_config, remembered_config, run_name, stage_failed,
                                   store_config, workspace_name)
from idtprior.sources import StaleCode
from idtprior.stages.registry import FLOWS, describe, upgrade_keys
from idtprior.storage import Workspace

RetryFailed = Enum("RetryFailed", {"no": "no", "retryable": "retryable", "all": "all"}, type=str, module=__name__)
"""The run form's choice of recorded failures to try again (``idtprior run --retry-failed``)."""

POOLS = ("cpu", "gpu")
"""Work pools, ``idtprior-<pool>``; every stage has one deployment per pool."""

StageName = Enum("StageName", {s: s for s in STAGES}, type=str, module=__name__)
"""The stages as an enum, generated from ``STAGES``, so the run form draws a select of exactly the stages that
exist (a typo cannot be typed)."""

FROM_FIRST = "(the first selected)"
FromStage = Enum("FromStage", {"first": FROM_FIRST, **{s: s for s in STAGES}}, type=str, module=__name__)
"""The "From stage" choice: the first selected stage (the default), or a stage; a plain select in the run form, with
no "StageName | None" toggle."""


def pool_name(pool: str) -> str:
    return f"idtprior-{pool}"


def stage_pool(config: PipelineConfig, stage: str) -> str:
    """The work pool (``cpu`` or ``gpu``) a stage's run goes to: ``pools.<stage>`` when it says cpu or gpu; on
    ``auto``, the training stages and evaluate go to the GPU, detect goes there with the Mask R-CNN backend, idt and
    encode with the torch IDT backend (``idt.backend: torch``, rows not imported from text files), every other stage
    to the CPU (fit_codebook and cluster use CuPy only where it is installed, which the config cannot tell: set
    ``pools.fit_codebook: gpu`` to send them there)."""
    from idtprior.stages.common import torch_backend

    choice = getattr(config.pools, stage, "auto")
    if choice != "auto":
        return choice
    if stage in TRAIN_STAGES or stage == "evaluate":
        return "gpu"
    if stage == "detect" and config.detect.backend == "maskrcnn":
        return "gpu"
    if stage in ("idt", "encode") and torch_backend(config):
        return "gpu"
    return "cpu"


def resolve_config(config: str | None, workspace: str | None = None, source: str | None = None,
                   video_root: str | None = None, overrides: dict[str, Any] | None = None,
                   render_demo: bool = False) -> PipelineConfig:
    """The config of a UI run: a preset or YAML file (None: the one ``workspace`` was last run with), then the
    workspace, source and video root given, then the overrides; validated as a whole.

    The ``demo`` preset with its own source reads the demo data next to the workspace (``<workspace>/../demo-data``),
    rendered there with the config's ``demo`` settings (overrides included) when ``render_demo`` (a run that ingests)
    and missing, as ``idtprior demo`` does."""
    if config and is_stored_config(config):  # a stage run a pipeline started: the config the pipeline resolved
        return apply_overrides(with_inputs(load_stored_config(config), workspace, source, video_root), overrides)
    if config is None or config == "":
        if not workspace:
            raise ConfigError("config is empty and no workspace is given: name a preset "
                              f"({', '.join(PRESETS)}), a YAML file, or a workspace that has been run")
        cfg = remembered_config(workspace)
        if cfg is None:
            raise ConfigError(f"workspace {workspace} has no {CONFIG_FILE} (no run has used it yet): give a config, "
                              f"a preset ({', '.join(PRESETS)}) or a YAML file")
        return apply_overrides(with_inputs(cfg, workspace, source, video_root), overrides)
    cfg = load_config(config_path(config))
    preset_source = cfg.ingest.source
    cfg = apply_overrides(with_inputs(cfg, workspace, source, video_root), overrides)
    if config == "demo" and cfg.ingest.source == preset_source:
        ws = Path(cfg.workspace).resolve()
        data = ws.parent / "demo-data"
        if render_demo:
            ensure_demo_data(cfg, data, progress=False, say=_log)
        cfg = demo_inputs(cfg, data, ws)
    return cfg


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # noqa: BLE001 - outside a run
        print(message)


def results_in_workspace(config: PipelineConfig) -> None:
    """From here on, persist this flow run's results (and a failure's exception) in the workspace's results folder,
    not in Prefect's default storage (``~/.prefect/storage``). A UI flow learns its workspace only from its
    parameters, after its result store was made, so the store of the running context is replaced (the in-process
    pipeline passes ``result_storage`` to its subflows instead: ``pipeline.in_workspace``)."""
    from prefect.filesystems import LocalFileSystem

    ctx = FlowRunContext.get()
    results = Workspace(config.workspace).results_dir
    if ctx is not None and results is not None:
        ctx.result_store = ctx.result_store.model_copy(update={
            "result_storage": LocalFileSystem(basepath=str(results))})


def same_config_on_retry(cfg: PipelineConfig) -> PipelineConfig:
    """The config this pipeline flow run resolved the first time it ran (``configs/runs/<flow run id>`` names it):
    a Retry resolves its parameters again, and an empty Config would read a ``config.yaml`` that runs in between
    may have rewritten. The first run stores ``cfg`` and returns it."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return cfg
    ws = Workspace(cfg.workspace)
    pointer = ws.path(CONFIGS_DIR, "runs", str(ctx.flow_run.id))
    first = ws.read_bytes(pointer)
    if first is not None:
        _log(f"a Retry: the config this run resolved first, {first.decode()}")
        return load_stored_config(first.decode())
    ws.write_bytes_atomic(pointer, store_config(cfg).encode())
    return cfg


def _from_deployment() -> bool:
    ctx = FlowRunContext.get()
    return bool(ctx and ctx.flow_run and ctx.flow_run.deployment_id)


def run_stages_as_deployments(config: PipelineConfig, stages: list[str], dask_address: str | None = None,
                              retry_failed: str | None = None) -> dict:
    """Start each stage as a run of its deployment ``idtprior-<stage>/<pool>`` (a subflow of this run in the UI, with
    its own Retry), one after the other; returns each stage's run name and state, or a Failed state naming the first
    stage that did not complete.

    Every stage run's ``config`` names the config this run resolved, stored by content (``runs.store_config``): a
    Retry of a stage run, and the stages after a run on the workspace in between, read exactly it. Each stage run's
    ``workspace`` parameter is linked to the previous stage's run, so the graph draws the chain ingest -> decode ->
    ..."""
    from prefect.deployments import run_deployment
    from prefect.utilities.engine import link_state_to_flow_run_result

    remember_config(config)
    stored = store_config(config)
    ws = Workspace(config.workspace)
    results: dict[str, dict] = {}
    previous = None
    for stage in stages:
        name = f"{flow_name(stage)}/{stage_pool(config, stage)}"
        # the config this run stored by content, local or not. The workspace string is a fresh object per stage:
        # Prefect keys its links by id(), and only this stage's parameter may point back at the previous stage's run
        parameters = {"config": fresh_copy(stored), "workspace": fresh_copy(ws.url), "dask_address": dask_address or ""}
        if retry_failed:  # the stage's recorded failures, reopened just before it runs
            reopen_failures(ws, stage, retry_failed)
        if previous is not None and previous.state is not None:
            link_state_to_flow_run_result(previous.state, parameters["workspace"])
        try:
            run = run_deployment(name, parameters=parameters, as_subflow=True, poll_interval=1,
                                 flow_run_name=f"{workspace_name(ws.url)}: {stage}")
        except Exception as e:  # noqa: BLE001 - no such deployment, server unreachable: named, with the fix
            return pipeline_failed(stage, ConfigError(
                f"cannot start deployment {name}: {e} (`idtprior serve`, or `prefect deploy --all` in infra/)"))
        state = run.state
        if state is None or not state.is_completed():
            return pipeline_failed(stage, StageFailed(
                f"its run {run.name!r} ended {state.name if state else 'without a state'}: "
                f"{state.message if state else ''} (Retry it from its page; then rerun this pipeline, which reuses "
                "every finished chunk)"))
        results[stage] = {"flow_run": run.name, "state": state.name, "pool": stage_pool(config, stage)}
        previous = run
    return results


# ------------------------------------------------------------------------------------------------ the run forms
def _param(default, title: str, description: str):
    # Prefect titles every field with the parameter's name ("video_root"); json_schema_extra puts a readable one back
    return Field(default, description=description, json_schema_extra={"title": title})


CONFIG_HELP = (f"a preset ({', '.join(PRESETS)}) or the path of a YAML config on the worker; the demo preset renders "
               "its videos next to the workspace when they are missing")
STAGE_CONFIG_HELP = ("empty: the config of the workspace's last pipeline run (its config.yaml), so a rerun never "
                     f"mixes presets; or a preset ({', '.join(PRESETS)}), the path of a YAML config, or a config the "
                     "workspace stored (configs/<hash>.yaml); this run's config and overrides apply to it only")
WORKSPACE_HELP = "folder (or fsspec URL) of the workspace; empty: the config's"
SOURCE_HELP = "folder of videos or a list file (Kinetics CSV, UCF101/HMDB51 split, paths); empty: the config's"
VIDEO_ROOT_HELP = ("folder that relative paths in the list file resolve against; empty: the config's (with a new "
                   "source: the list file's folder)")
STAGES_HELP = "the stages to run (in pipeline order whatever the order chosen); empty: the config's stage list"
FROM_STAGE_HELP = "run the selected stages from this one on"
OVERRIDES_HELP = ('dotted config keys to values, e.g. {"pretrain_la.epochs": 5, "ingest.num_chunks": 16}; checked '
                  "against the config before any stage runs")
RETRY_HELP = ("videos whose failure is recorded, tried again in the selected stages: retryable (a fault of the "
              "environment: memory, a device, storage) or all (every recorded failure); no: none")
DASK_HELP = ("address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786; empty: the config's (a local cluster "
             "per stage run by default)")


@flow(name=flow_name("pretrain"), flow_run_name=run_name("pretrain"),
      description="The IDT-prior pretraining pipeline: ingest, decode, detect, IDT sample, codebook, encode, cluster, "
      "training; each stage a run of its own deployment on its work pool.")
def pretrain_ui(
        config: str = _param("demo", "Config", CONFIG_HELP),
        workspace: str = _param("", "Workspace", WORKSPACE_HELP),
        source: str = _param("", "Source", SOURCE_HELP),
        video_root: str = _param("", "Video root", VIDEO_ROOT_HELP),
        stages: list[StageName] = _param([], "Stages", STAGES_HELP),
        from_stage: FromStage = _param(FromStage.first, "From stage", FROM_STAGE_HELP),
        overrides: dict[str, Any] = _param({}, "Overrides", OVERRIDES_HELP),
        dask_address: str = _param("", "Dask scheduler", DASK_HELP),
        retry_failed: RetryFailed = _param(RetryFailed.no, "Retry failed videos", RETRY_HELP)) -> dict:
    """Run the pipeline on a workspace from a preset or a YAML config."""
    retry = getattr(retry_failed, "value", retry_failed)
    retry = None if retry in (None, "", "no") else retry
    chosen = [getattr(s, "value", s) for s in stages] if stages else None
    start = getattr(from_stage, "value", from_stage)
    start = None if start in (None, "", FROM_FIRST) else start
    try:
        cfg = resolve_config(config, workspace, source, video_root, overrides)
        selected = select_stages(cfg, chosen, start)
        if "ingest" in selected and config == "demo":  # renders the demo data where missing
            cfg = resolve_config(config, workspace, source, video_root, overrides, render_demo=True)
        cfg = same_config_on_retry(cfg)
        selected = select_stages(cfg, chosen, start)
    except ConfigError as e:
        return stage_failed("pretrain", e)
    results_in_workspace(cfg)
    if _from_deployment():
        return run_stages_as_deployments(cfg, selected, dask_address, retry)
    return run_stages(cfg, selected, dask_address, progress=False, retry_failed=retry)


def _stage_ui_flow(stage: str):
    """The UI flow ``idtprior-<stage>``: one stage on a workspace, by default with the config it was last run with."""

    def run(config: str = _param("", "Config", STAGE_CONFIG_HELP),
            workspace: str = _param("", "Workspace", WORKSPACE_HELP),
            source: str = _param("", "Source", SOURCE_HELP),
            video_root: str = _param("", "Video root", VIDEO_ROOT_HELP),
            overrides: dict[str, Any] = _param({}, "Overrides", OVERRIDES_HELP),
            dask_address: str = _param("", "Dask scheduler", DASK_HELP)) -> dict:
        try:
            cfg = resolve_config(config, workspace, source, video_root, overrides,
                                 render_demo=stage == "ingest")
        except ConfigError as e:
            return stage_failed(stage, e)
        results_in_workspace(cfg)
        try:
            upgrade_keys(cfg, Workspace(cfg.workspace))  # records made before behaviour versions, once
        except StaleCode as e:
            return stage_failed(stage, e)
        return FLOWS[stage].fn(cfg, dask_address, False)

    # a module-level name: the entrypoint a worker or `serve` loads (idtprior.flows.deployments.<stage>_ui)
    run.__name__ = run.__qualname__ = f"{stage}_ui"
    # the stage flow's own description, except for the training flows, which are imported only when one runs
    run.__doc__ = f"Run the {stage} stage on a workspace." + (f" {describe(stage)}" if describe(stage) else "")
    return flow(name=flow_name(stage), flow_run_name=run_name(stage), description=run.__doc__)(run)


STAGE_UI_FLOWS = {stage: _stage_ui_flow(stage) for stage in STAGES}
"""Every stage's UI flow by stage name."""
globals().update({f"{stage}_ui": f for stage, f in STAGE_UI_FLOWS.items()})


def entrypoints() -> dict[str, str]:
    """Flow name -> the entrypoint of its UI flow, for ``infra/prefect.yaml`` (file paths from the repository root)."""
    out = {flow_name("pretrain"): "idtprior/flows/deployments.py:pretrain_ui"}
    out.update({flow_name(s): f"idtprior/flows/deployments.py:{s}_ui" for s in STAGES})
    return out


def deployments(work_pools: bool = False) -> list:
    """Every deployment: ``idtprior-pretrain/default`` and, per stage, ``idtprior-<stage>/cpu`` and ``.../gpu``.

    ``work_pools``: bind each to its pool (``idtprior-cpu``, ``idtprior-gpu``; the pipeline to the CPU pool) for
    ``.deploy``/workers; without, for ``serve`` (one process runs every deployment)."""
    from prefect.types.entrypoint import EntrypointType

    def build(f, name: str, pool: str, description: str):
        kw = {"work_pool_name": pool_name(pool)} if work_pools else {}
        return f.to_deployment(name=name, description=description, entrypoint_type=EntrypointType.MODULE_PATH,
                               tags=["idtprior", pool], **kw)

    out = [build(pretrain_ui, "default", "cpu", "the whole pipeline; each stage runs as its own deployment's run")]
    for stage in STAGES:
        for pool in POOLS:
            out.append(build(STAGE_UI_FLOWS[stage], pool, pool, f"the {stage} stage on the {pool_name(pool)} pool"))
    return out


def serve(limit: int | None = None) -> None:
    """Register every deployment and run them in this process until interrupted (``idtprior serve``)."""
    from prefect import serve as prefect_serve

    if limit is not None and limit < 2:
        raise ConfigError(f"--limit {limit}: a pipeline run waits for its stage runs, which need slots of their own; "
                          "give at least 2")
    prefect_serve(*deployments(), limit=limit)
