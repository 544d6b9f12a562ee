"""The upgrade of workspaces keyed before behaviour versions: a stage's plans carry the legacy key of each chunk whose
record was made then (``with_legacy_keys``), and such a record is re-keyed in place (``rekey_legacy``) instead of
recomputed. ``stages.registry.upgrade_keys`` runs it once per workspace, upstream first."""

from idtprior.config.base import ConfigError
from idtprior.keyscheme import UPGRADED, legacy, legacy_keys
from idtprior.runtime.worker import run_logger
from idtprior.storage import Workspace

FAISS_SENSITIVE = ("cluster", "pretrain_ir", "pretrain_la", "tune_joint", "pretrain_la_bank", "supervised",
                   "evaluate")
"""Stages whose k-means chose faiss by itself before behaviour versions, whenever faiss was importable: where it is
importable now, their legacy records may hold faiss's labels, and are not re-keyed (they recompute, with numpy)."""


def with_legacy_keys(ws: Workspace, stage: str, plans: dict[str, dict], replan) -> dict[str, dict]:
    """Mark each chunk of ``plans`` with the key it had under the legacy scheme (``plan["legacy"]``:
    {"fingerprint", and for a trained network "train_fingerprint"}), computed by ``replan()`` under
    ``keyscheme.legacy_keys``, when the workspace still holds records of ``stage`` made before behaviour versions;
    ``plans`` unchanged otherwise (a workspace made or upgraded since plans once)."""

    if legacy() or ws.fs.exists(ws.path(*UPGRADED)) or all(r.behaviour for r in ws.records(stage).values()):
        return plans
    if stage in FAISS_SENSITIVE:
        from idtprior.encoding.kmeans import faiss_available

        if faiss_available():
            return plans
    with legacy_keys():
        try:
            old = replan()
        except (ConfigError, KeyError, FileNotFoundError, ValueError):  # what the legacy scheme cannot plan: no reuse
            return plans
    for chunk, plan in plans.items():
        if chunk in old:
            plan["legacy"] = {k: old[chunk][k] for k in ("fingerprint", "train_fingerprint") if k in old[chunk]}
    return plans


def rekey_legacy(ws: Workspace, stage: str, plans: dict[str, dict], variant: str) -> int:
    """Re-key in place the records of ``stage`` whose key is their chunk's legacy key (``with_legacy_keys``): computed
    by the code at the switch to behaviour versions, from the same inputs and settings, so they are this plan's
    results; ``variant``: the code they are stamped with (``stages.common.stage_variant``). Drops the ``legacy``
    entries from ``plans``; returns how many records were re-keyed."""
    from idtprior.runtime.codeprint import code_key, pins, variant_of

    done = 0
    for chunk, plan in plans.items():
        old = plan.pop("legacy", None)
        if old is None or old["fingerprint"] == plan["fingerprint"]:
            continue
        rec = ws.read_record(stage, chunk)
        if rec is None or rec.behaviour or rec.fingerprint != old["fingerprint"]:
            continue
        name = variant_of(variant)
        stamp = {"behaviour": code_key(name), "code": pins()[name]["at_switch"]}
        train = (old["train_fingerprint"], plan["train_fingerprint"]) if "train_fingerprint" in old else None
        done += ws.rekey(stage, chunk, old["fingerprint"], plan["fingerprint"], stamp, train)
    if done:
        run_logger().info(f"{stage}: {done} records made before behaviour versions re-keyed in place (same code, "
                       f"inputs and settings: nothing recomputed)")
    return done
