"""The full pretraining flow: the stages that exist, in order, sharing one Dask cluster.

No ``from __future__ import annotations`` here: it breaks pydantic parameters under ``flow.serve()``.
"""

import time

from prefect import flow
from prefect.logging import get_run_logger
from prefect.states import Failed

from idtprior.config import STAGES, PipelineConfig
from idtprior.config.base import ConfigError
from idtprior.runtime.dask import dask_cluster
from idtprior.runtime.records import reopen_failures
from idtprior.runtime.runs import flow_name, remember_config, run_name
from idtprior.stages.registry import FLOWS, upgrade_keys
from idtprior.storage import Workspace


def select_stages(config: PipelineConfig, stages: list[str] | None = None, from_stage: str | None = None) -> list[str]:
    """The stages to run, in pipeline order: ``stages`` (or the config's), from ``from_stage`` on if given.

    ``from_stage`` only cuts the selection: with the demo config (no ``detect``) ``--from decode`` runs decode, idt,
    ... but not detect, whose boxes would change IDT's keys. A ``from_stage`` outside the selection is an error."""
    chosen = list(stages) if stages else list(config.stages)
    unknown = [s for s in chosen + ([from_stage] if from_stage else []) if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; known stages: {list(STAGES)}")
    ordered = [s for s in STAGES if s in chosen]
    if from_stage:
        if from_stage not in ordered:
            raise ConfigError(f"--from {from_stage}: not one of the selected stages {ordered} (the config's stages "
                              f"or --stages)")
        ordered = [s for s in ordered if STAGES.index(s) >= STAGES.index(from_stage)]
    return ordered


def in_workspace(flow_obj, config: PipelineConfig):
    """``flow_obj`` with its results (a failed run's exception too) persisted in the workspace's results folder, not in
    Prefect's default storage (``~/.prefect/storage``): a workspace holds everything its runs wrote."""
    results = Workspace(config.workspace).results_dir
    return flow_obj.with_options(result_storage=results) if results is not None else flow_obj


def pipeline_failed(stage: str, exc: BaseException):
    """The pipeline's Failed state when ``stage`` failed: its message names the stage; the stage's own run logged the
    error and holds the details (and a Retry in the UI where it came from a deployment), so the pipeline's log says
    only where it stopped instead of repeating the error."""
    get_run_logger().info(f"stopped: stage {stage} failed")
    return Failed(message=f"stage {stage} failed: {exc}", data=exc)


def run_stages(config: PipelineConfig, stages: list[str], dask_address: str | None = None,
               progress: bool = True, retry_failed: str | None = None) -> dict:
    """Run ``stages`` in this process, each a subflow of the current flow run, sharing one Dask cluster; returns their
    counts (each with the stage's wall ``seconds``), or a Failed state naming the first stage that failed (its
    exception in the state's data).

    Each stage waits for the previous one's result (``wait_for``), so the run graph draws the chain
    ingest -> decode -> ...; the results' strings are unshared (``runs.unshared``), so no stage is drawn as a child
    of an earlier one through a config value that happens to be the same object. ``retry_failed`` ("retryable" or
    "all"): each stage's recorded failures are reopened just before it runs (``common.reopen_failures``)."""
    remember_config(config)
    results: dict[str, dict] = {}
    previous = None
    with dask_cluster(config.dask, dask_address) as address:
        for stage in stages:
            start = time.monotonic()
            try:
                upgrade_keys(config, Workspace(config.workspace))  # once per workspace; a file check after
                if retry_failed:
                    reopen_failures(Workspace(config.workspace), stage, retry_failed)
                results[stage] = in_workspace(FLOWS[stage], config)(
                    config, dask_address=address, progress=progress,
                    wait_for=[previous] if previous is not None else None)
            except Exception as e:  # noqa: BLE001 - the stage's run logged it; the pipeline fails naming the stage
                return pipeline_failed(stage, e)
            previous = results[stage]
            # in place, after the stage's run returned it: the same object stays the next stage's wait_for edge
            previous["seconds"] = round(time.monotonic() - start, 1)
    return results


@flow(name=flow_name("pretrain"), flow_run_name=run_name("pretrain"))
def pretrain_pipeline(config: PipelineConfig, stages: list[str] | None = None, from_stage: str | None = None,
                      dask_address: str | None = None, progress: bool = True,
                      retry_failed: str | None = None) -> dict:
    """Run the selected stages (each a subflow, so each is visible and rerunnable on its own); returns their counts.

    A stage that fails ends the run Failed with one message naming the stage (a Python caller gets the stage's
    exception raised: a ``ConfigError`` for a missing prerequisite). ``retry_failed``: "retryable" (videos that failed
    for a fault of the environment) or "all" (every recorded failure): tried again (``common.reopen_failures``)."""
    try:
        selected = select_stages(config, stages, from_stage)
    except ConfigError as e:
        get_run_logger().error(str(e))
        return Failed(message=str(e), data=e)
    return run_stages(config, selected, dask_address, progress, retry_failed)
