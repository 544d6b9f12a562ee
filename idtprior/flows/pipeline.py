"""The full pretraining flow: the stages that exist, in order, sharing one Dask cluster.

No ``from __future__ import annotations`` here: it breaks pydantic parameters under ``flow.serve()``.
"""

from prefect import flow

from idtprior.config import STAGES, ConfigError, PipelineConfig
from idtprior.flows.common import dask_cluster
from idtprior.flows.stages import STAGE_FLOWS
from idtprior.flows.training import TRAIN_FLOWS

FLOWS = {**STAGE_FLOWS, **TRAIN_FLOWS}
"""Every stage's flow by name."""


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


@flow(name="idtprior-pretrain", flow_run_name="pretrain {config.workspace}")
def pretrain_pipeline(config: PipelineConfig, stages: list[str] | None = None, from_stage: str | None = None,
                      dask_address: str | None = None, progress: bool = True) -> dict:
    """Run the selected stages (each a subflow, so each is visible and rerunnable on its own); returns their counts."""
    results = {}
    with dask_cluster(config.dask, dask_address) as address:
        for stage in select_stages(config, stages, from_stage):
            results[stage] = FLOWS[stage](config, dask_address=address, progress=progress)
    return results
