"""The stage registry: every stage's flow and plan by name, in pipeline order, and what needs all of them.

Above the stages' own modules (``stages.ingest`` .. ``stages.cluster``, the training stages' ``stages.pretrain``,
``stages.evaluate``) and below their launchers (the pipeline, the UI's deployments, ``idtprior status``): the one place
that knows every stage. The order is ``config.STAGES``, the pipeline's.

- ``FLOWS``: stage -> its flow (the training flows and evaluate imported on first use: torch);
- ``stage_plan``: stage -> its plans, built without running or writing anything; ``expected_fingerprints``, what
  ``idtprior status --config`` compares the records with;
- ``upgrade_keys``: the re-keying of records made before behaviour versions, which needs every stage's plan; the
  launchers run it before a stage's flow (``pipeline.run_stages``, the UI's stage flows).
"""

import json
from collections.abc import Iterator, Mapping

from idtprior.config import STAGES, PipelineConfig
from idtprior.config.base import ConfigError
from idtprior.config.training import TRAIN_STAGES
from idtprior.keyscheme import UPGRADED
from idtprior.runtime.upgrade import rekey_legacy, with_legacy_keys
from idtprior.runtime.worker import run_logger
from idtprior.sources import check_process
from idtprior.stages.cluster import cluster_flow, plan_cluster
from idtprior.stages.common import ALL, SKETCHES, ok_rows, stage_variant
from idtprior.stages.decode import decode_flow, plan_decode
from idtprior.stages.detect import detect_flow, plan_detect
from idtprior.stages.encode import encode_flow, plan_encode, sketches_fingerprint
from idtprior.stages.fit_codebook import fit_codebook_flow, plan_fit_codebook
from idtprior.stages.idt import idt_flow, plan_idt
from idtprior.stages.ingest import ingest_flow, plan_ingest
from idtprior.storage import Workspace
from idtprior.storage.lock import StageBusy, stage_lock

STAGE_FLOWS = {"ingest": ingest_flow, "decode": decode_flow, "detect": detect_flow, "idt": idt_flow,
               "fit_codebook": fit_codebook_flow, "encode": encode_flow, "cluster": cluster_flow}
"""The data stages' flows, imported with the registry (none of them imports torch)."""


class StageFlows(Mapping):
    """Every stage's flow by name. The training flows are imported on first use: they pull in torch and Lightning
    (seconds per process), which a run of the other stages (a new process per deployment run) never needs."""

    def __getitem__(self, stage: str):
        if stage in STAGE_FLOWS:
            return STAGE_FLOWS[stage]
        if stage in TRAIN_STAGES:
            from idtprior.stages.pretrain.flow import TRAIN_FLOWS

            return TRAIN_FLOWS[stage]
        if stage == "evaluate":
            from idtprior.stages.evaluate.flow import evaluate_flow

            return evaluate_flow
        raise KeyError(stage)

    def __iter__(self) -> Iterator[str]:
        return iter([s for s in STAGES if s in STAGE_FLOWS or s in TRAIN_STAGES or s == "evaluate"])

    def __len__(self) -> int:
        return len(list(iter(self)))


FLOWS = StageFlows()
"""Every stage's flow by name."""


def describe(stage: str) -> str | None:
    """A stage flow's one-line description where it is known without importing torch (the data stages'), else None."""
    flow_obj = STAGE_FLOWS.get(stage)
    return flow_obj.description if flow_obj is not None else None


STAGE_PLANS = {"ingest": lambda config, ws: plan_ingest(config, ws, remember=False), "decode": plan_decode,
               "detect": lambda config, ws: plan_detect(config, ws, remember=False),
               "idt": lambda config, ws: plan_idt(config, ws, remember=False), "fit_codebook": plan_fit_codebook,
               "encode": lambda config, ws: plan_encode(config, ws, remember=False), "cluster": plan_cluster}
"""Stages whose plans (chunk -> task arguments with the "fingerprint") can be built without running anything."""


def stage_plan(stage: str, config: PipelineConfig, ws: Workspace) -> dict[str, dict] | None:
    """Stage (a stage of the pipeline, or ``sketches``, encode's assembly) -> its plans, chunk -> task arguments with
    the "fingerprint" (and "legacy" where records made before behaviour versions remain), built without running or
    writing anything; None for a stage planned only inside its flow."""
    if stage in STAGE_PLANS:
        return STAGE_PLANS[stage](config, ws)
    if stage == SKETCHES:
        ids = [r.video_id for r in ok_rows(ws)]

        def assembly():
            return {ALL: {"fingerprint": sketches_fingerprint(ws.records("encode"), ids)}}
        return with_legacy_keys(ws, stage, assembly(), assembly)
    if stage in TRAIN_STAGES:  # the record key: training + evaluation (an eval change re-evaluates)
        from idtprior.stages.pretrain.flow import plan_train_stage

        return {ALL: plan_train_stage(stage, config.model_copy(update={"workspace": ws.url}))}
    if stage == "evaluate":
        from idtprior.stages.evaluate.flow import plan_evaluate

        return plan_evaluate(config, ws)
    return None


def expected_fingerprints(config: PipelineConfig, ws: Workspace) -> dict[str, dict[str, str] | str]:
    """Per stage of ``config.stages``: chunk -> the fingerprint a run with ``config`` would key the chunk on, computed
    from the workspace's current records without running or writing anything; or, as a string, why it cannot be told.
    ``idtprior status --config`` compares these with the records."""
    out: dict[str, dict[str, str] | str] = {}
    stages = [*config.stages, *([SKETCHES] if "encode" in config.stages else [])]
    for stage in stages:  # encode's assembly keyed on the encode records as they are now
        try:
            plans = stage_plan(stage, config, ws)
        except (ConfigError, KeyError, FileNotFoundError) as e:  # an earlier stage has not run, a source is gone
            out[stage] = f"cannot plan it: {e}"
            continue
        if plans is None:
            out[stage] = "its fingerprint is computed inside its flow (no plan-only path yet)"
            continue
        out[stage] = {chunk: _expected(ws, stage, chunk, p) for chunk, p in plans.items()}
    return out


UPGRADE_ORDER = ("ingest", "decode", "detect", "idt", "fit_codebook", "encode", SKETCHES, "cluster",
                 *TRAIN_STAGES, "evaluate")
"""Stages in the order their keys feed each other: an upstream record is re-keyed before the records keyed on it."""


def upgrade_keys(config: PipelineConfig, ws: Workspace) -> dict[str, int]:
    """The switch to behaviour versions, once per workspace, before a launcher runs a stage: every
    record made before it whose legacy key the config plans is re-keyed in place (``rekey_legacy``), upstream first, so
    that a stage run alone after an upgrade keys on its upstream's new keys and nothing reruns when those stages run
    later. Each stage's records under that stage's lock (a stage busy elsewhere is left for a later run). When no such
    record is left, ``cache/keys-upgraded.json`` says so and later runs skip the pass. Returns stage -> records
    re-keyed; never fails the run, except in a process whose code changed on disk since it imported it (``StaleCode``:
    it would key records with code it does not run)."""
    if ws.fs.exists(ws.path(*UPGRADED)):
        return {}
    check_process("re-keying records made before behaviour versions")
    done, left = {}, []
    for stage in UPGRADE_ORDER:
        try:
            if all(r.behaviour for r in ws.records(stage).values()):
                continue
            with stage_lock(ws, "encode" if stage == SKETCHES else stage):
                plans = stage_plan(stage, config, ws)
                if plans:
                    done[stage] = rekey_legacy(ws, stage, plans, stage_variant(stage, config))
        except (ConfigError, KeyError, FileNotFoundError, ValueError, StageBusy):
            pass  # not plannable with this config, or busy: its records are left as they are
        except Exception as e:  # noqa: BLE001 - the upgrade never fails the stage that runs
            run_logger().warning(f"re-keying {stage}'s records made before behaviour versions: {e}")
        if any(not r.behaviour for r in ws.records(stage).values()):
            left.append(stage)
    if not left:
        ws.write_bytes_atomic(ws.path(*UPGRADED), json.dumps({"keys": "behaviour versions"}).encode())
    return {s: n for s, n in done.items() if n}


def _expected(ws: Workspace, stage: str, chunk: str, plan: dict) -> str:
    """The key a run would find the chunk's record current under: the plan's, or the record's own where the run would
    re-key it in place (a record made before behaviour versions, keyed with the plan's legacy key)."""
    old = plan.get("legacy", {}).get("fingerprint")
    if old is not None:
        rec = ws.read_record(stage, chunk)
        if rec is not None and not rec.behaviour and rec.fingerprint == old:
            return old
    return plan["fingerprint"]
