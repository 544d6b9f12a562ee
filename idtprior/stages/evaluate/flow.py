"""The evaluate stage as a flow: the trained networks of a pretraining workspace evaluated on this workspace's labelled
train/test splits, one record per (network, protocol, clip length), each keyed on its own inputs.

This workspace is the evaluation workspace (ingest + decode of a UCF101 / HMDB51 split list, or the demo's own
splits); ``evaluate.pretrain_workspace`` names the workspace whose records hold the encoders (None: this one). The
pretraining workspace is only read.

No ``from __future__ import annotations`` here: it breaks pydantic parameters under ``flow.serve()``.
"""

from pathlib import Path

from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from idtprior.config import PipelineConfig
from idtprior.config.base import ConfigError
from idtprior.config.training import EVALUATION_NETWORKS
from idtprior.datasets.lists import detect_format
from idtprior.evaluation.report import evaluation_tables
from idtprior.keyscheme import upstream_train_key
from idtprior.runtime.artifacts import artifact_key
from idtprior.runtime.codeprint import code_key
from idtprior.runtime.dask import run_chunks
from idtprior.runtime.keys import chunk_fingerprint
from idtprior.runtime.records import provenance_lines
from idtprior.runtime.runs import how_to_run, remembered_config, stage_flow
from idtprior.runtime.upgrade import with_legacy_keys
from idtprior.stages.common import ALL
from idtprior.stages.evaluate.task import SCRATCH, STAGE, chunk_name, evaluate_task, release_frames
from idtprior.stages.pretrain.flow import decoded_rows, frames_key, read_label_sets
from idtprior.storage import Workspace, hash_json
from idtprior.storage.upstream import planned


def frozen_blocks_for(config: PipelineConfig) -> int:
    """``evaluate.frozen_blocks``, or on ``auto`` 2 for an HMDB51 split source (the paper freezes up to the second
    block there) and 1 otherwise (UCF101: conv1 and the first block)."""
    value = config.evaluate.frozen_blocks
    if value != "auto":
        return int(value)
    fmt = config.ingest.source_format
    if fmt == "auto" and config.ingest.source:
        try:
            fmt = detect_format(Path(config.ingest.source).expanduser())
        except OSError:
            fmt = "auto"
    return 2 if fmt == "hmdb_split" else 1


def pretraining_config(config: PipelineConfig) -> tuple[Workspace, PipelineConfig]:
    """The pretraining workspace and the config it was last run with (this config when it is this workspace, or
    when it remembers none)."""
    cfg = config.evaluate
    if cfg.pretrain_workspace is None:
        return Workspace(config.workspace), config
    pre_ws = Workspace(cfg.pretrain_workspace)
    if pre_ws.url == Workspace(config.workspace).url:
        return pre_ws, config
    return pre_ws, remembered_config(pre_ws.url) or config


def network_inputs(config: PipelineConfig, pre_ws: Workspace, pre_cfg: PipelineConfig,
                   skipped: list[str]) -> dict[str, dict]:
    """network -> {"train_fingerprint", "encoder_path", "scratch"}. A training stage without a record: skipped (named
    in ``skipped``) when the networks are the default list, else a ConfigError naming the stage to run first."""
    cfg = config.evaluate
    default = tuple(cfg.networks) == EVALUATION_NETWORKS
    out = {}
    for network in cfg.networks:
        if network == SCRATCH:
            shared = pre_cfg.pretrain
            arch = {"arch": shared.arch, "width": shared.width, "embed_dim": shared.embed_dim, "seed": shared.seed}
            out[network] = {"train_fingerprint": f"scratch:{hash_json(arch)}", "encoder_path": None,
                            "scratch": shared}
            continue
        rec = pre_ws.read_record(network, ALL)
        if rec is None:
            if default:
                skipped.append(network)
                continue
            raise ConfigError(f"evaluate: network {network} has not been trained in {pre_ws.url} (no {network} "
                              f"record); run the {network} stage there first ({how_to_run(network)}) or leave it "
                              f"out of evaluate.networks")
        info = rec.videos.get("model", {})
        encoder = info.get("encoder", "")
        if not encoder or not Path(encoder).is_file():
            raise ConfigError(f"evaluate: network {network} of {pre_ws.url}: its encoder file {encoder!r} is "
                              f"missing; run the {network} stage there again ({how_to_run(network)})")
        out[network] = {"train_fingerprint": upstream_train_key(info, rec.fingerprint), "encoder_path": encoder,
                        "scratch": None}
    return out


def plan_evaluate(config: PipelineConfig, ws: Workspace, skipped: list[str] | None = None) -> dict[str, dict]:
    """The evaluate stage's records: chunk ``<network>.<protocol>.<clip length>`` -> the task's arguments, with the
    record's "fingerprint". Runs and writes nothing. A record's key: the network's train fingerprint (scratch: its
    architecture and seed), the evaluation videos' frames, labels and splits, the settings of its protocol, and the
    stage's code. ``skipped``: extended with the default networks not trained in the pretraining workspace."""
    cfg = config.evaluate
    rows, frames, decode_fps = decoded_rows(ws)
    train_ids = sorted(r.video_id for r in rows if r.split == cfg.train_split)
    test_ids = sorted(r.video_id for r in rows if r.split == cfg.test_split)
    for name, ids in (("train_split", train_ids), ("test_split", test_ids)):
        if not ids:
            raise ConfigError(f"evaluate.{name} {getattr(cfg, name)!r}: no decoded video of {ws.url}'s manifest is "
                              f"in it (splits there: {sorted({r.split for r in rows})})")
    ids = sorted(train_ids + test_ids)
    label_sets = {"label": {r.video_id: r.label for r in rows if r.label}}
    if config.pretrain.eval_labels_file:
        for name, values in read_label_sets(config.pretrain.eval_labels_file).items():
            label_sets.setdefault(name, values)
    label_sets = {c: {v: values[v] for v in ids if values.get(v)} for c, values in label_sets.items()}
    label_sets = {c: values for c, values in label_sets.items() if values}
    column = cfg.label_column
    if not any(v in label_sets.get(column, {}) for v in test_ids) or not any(
            v in label_sets.get(column, {}) for v in train_ids):
        raise ConfigError(f"evaluate.label_column {column!r}: no label for the training or the test videos of "
                          f"{ws.url}; label columns there: {sorted(label_sets)}")
    pre_ws, pre_cfg = pretraining_config(config)
    networks = network_inputs(config, pre_ws, pre_cfg, skipped if skipped is not None else [])
    shared = pre_cfg.pretrain
    crop_size = cfg.crop_size or shared.crop_size
    frame_step = cfg.frame_step or shared.frame_step
    frozen = frozen_blocks_for(config)
    videos = hash_json({"frames": frames_key(config, ws, rows, ids, frames, decode_fps), "train": train_ids,
                        "test": test_ids})
    features = {"crop_size": crop_size, "frame_step": frame_step, "test_clips": cfg.test_clips, "seed": cfg.seed}
    settings = {
        "finetune": {**features, "label_column": column, "frozen_blocks": frozen,
                     "crop_scales": list(shared.crop_scales), "hflip": shared.hflip,
                     **cfg.model_dump(mode="json", include={"epochs", "lr", "momentum", "weight_decay", "lr_drops",
                                                            "plateau_patience", "batch_size", "val_fraction",
                                                            "dropout"})},
        "probe": {**features, "label_column": column,
                  **cfg.model_dump(mode="json", include={"shots", "shot_modes", "shot_seeds", "probe_c"})},
        "knn": {**features, "label_column": column, **cfg.model_dump(mode="json", include={"knn_k", "knn_tau"})},
    }
    labels_key = {"finetune": hash_json(label_sets[column]), "probe": hash_json(label_sets[column]),
                  "knn": hash_json(label_sets)}
    code = code_key(STAGE)
    common = {
        "train_ids": train_ids, "train_frames": [frames[v] for v in train_ids], "test_ids": test_ids,
        "test_frames": [frames[v] for v in test_ids], "label_sets": label_sets, "label_column": column,
        "crop_size": crop_size, "frame_step": frame_step, "crop_scales": tuple(shared.crop_scales),
        "hflip": shared.hflip, "frozen_blocks": frozen, "config": cfg, "videos_key": videos}
    decoded = planned(ws.records("decode"))
    plans = {}
    for network, net in networks.items():
        # the records the tasks read, checked when each starts and before it commits (``storage.upstream``): the
        # frames, and the network where it was trained in this workspace
        upstream = {"decode": decoded}
        if net["encoder_path"] is not None and pre_ws.url == ws.url:
            upstream[network] = {ALL: pre_ws.read_record(network, ALL).content_key}
        for protocol in cfg.protocols:
            for length in cfg.clip_lengths:
                chunk = chunk_name(network, protocol, length)
                inputs = {"network": net["train_fingerprint"], "videos": videos, "labels": labels_key[protocol]}
                fp = chunk_fingerprint(STAGE, chunk, inputs, hash_json({"clip_length": length, **settings[protocol]}),
                                       code)
                plans[chunk] = {"fingerprint": fp, "network": network, "protocol": protocol, "clip_length": length,
                                **net, **common, "upstream": upstream}
    return with_legacy_keys(ws, STAGE, plans, lambda: plan_evaluate(config, ws, []))


@stage_flow(STAGE)
def evaluate_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """Finetune, few-shot probe and kNN of the pretraining workspace's networks on this workspace's labelled splits;
    one record per (network, protocol, clip length); Tables 1-2 of the paper, the kNN / NMI / purity table and the
    paired McNemar tests in the summary artifact."""
    ws = Workspace(config.workspace)
    skipped: list[str] = []
    plans = plan_evaluate(config, ws, skipped)
    logger = get_run_logger()
    if skipped:
        logger.warning(f"evaluate: skipped {', '.join(skipped)}: not trained in "
                       f"{pretraining_config(config)[0].url} (the default network list; list networks by hand to "
                       f"require them)")
    # one at a time: each evaluation fills the device (or every core) by itself; they share the videos' frames in
    # memory (evaluate.frame_cache_mb), freed when they end
    try:
        records = run_chunks(evaluate_task, ws, STAGE, plans, progress, 1)
    finally:
        release_frames()
    results = [records[c].videos["result"] for c in sorted(records)]
    markdown = evaluation_tables(results)
    if skipped:
        markdown += f"\n\nSkipped (not trained in the pretraining workspace): {', '.join(skipped)}\n"
    markdown += "".join(f"\n\n- {line}" for line in provenance_lines(ws, STAGE, records))
    create_markdown_artifact(key=artifact_key(ws, STAGE, "summary"), markdown=markdown,
                             description=f"evaluate: {len(records)} evaluations")
    counts = {"stage": STAGE, "chunks": len(records), "videos_ok": len(plans[next(iter(plans))]["test_ids"])
              if plans else 0, "videos_failed": 0}
    for r in results:
        if r["protocol"] == "finetune":
            counts[f"finetune_{r['network']}_{r['clip_length']}"] = round(r["accuracy"], 4)
        elif r["protocol"] == "knn" and r["label_column"] in r["knn"]:
            counts[f"knn_{r['network']}_{r['clip_length']}"] = round(r["knn"][r["label_column"]], 4)
    logger.info(f"evaluate: {counts}")
    return counts
