"""The training stages as flows: ``pretrain_ir`` (Instance Recognition warm-up), ``pretrain_la`` (Local Aggregation
with the IDT clusters) and ``tune_joint`` (LA in the joint [bank | IDT sketch] space); and the baselines of the paper's
tables as stages of their own, each with its record, run folder and fingerprint, so one workspace holds them all:
``pretrain_la_bank`` (Video LA: LA with the memory bank's clusters) and ``supervised`` (the same network trained on the
training split's labels, the upper bound). Video IR is ``pretrain_ir``; Scratch is the seeded random init
(``task.initial_encoder``), whose kNN every stage without ``init_from`` records as ``knn_init``.

No ``from __future__ import annotations`` here: it breaks pydantic parameters under ``flow.serve()``.
"""

import csv
from pathlib import Path

from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from idtprior.config import PipelineConfig
from idtprior.config.base import ConfigError
from idtprior.config.stages import DecodeConfig
from idtprior.keyscheme import legacy, upstream_key, upstream_train_key
from idtprior.runtime.artifacts import artifact_key
from idtprior.runtime.codeprint import code_key
from idtprior.runtime.dask import run_chunks
from idtprior.runtime.keys import chunk_fingerprint
from idtprior.runtime.progress import EpochProgress
from idtprior.runtime.records import provenance_lines
from idtprior.runtime.runs import how_to_run, missing_stage, stage_flow
from idtprior.runtime.upgrade import with_legacy_keys
from idtprior.stages.common import ALL
from idtprior.stages.decode import decode_code, plan_decode
from idtprior.stages.pretrain.job import train_stage_job_task
from idtprior.stages.pretrain.task import (epoch_rows, prepare_stage_run, supervised_labels, train_config_fields,
                                           train_stage, train_stage_task)
from idtprior.storage import Workspace, hash_json, read_manifest, sanitize_id
from idtprior.storage.upstream import planned

IGNORED_LABEL_COLUMNS = ("video_id", "path", "split", "group")


def read_label_sets(path: str) -> dict[str, dict[str, str]]:
    """Every label column of a CSV with a ``video_id`` column -> {column: {sanitised id: value}}."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "video_id" not in reader.fieldnames:
            raise ConfigError(f"pretrain.eval_labels_file {path}: needs a video_id column; header is "
                              f"{reader.fieldnames}")
        columns = [c for c in reader.fieldnames if c not in IGNORED_LABEL_COLUMNS]
        sets: dict[str, dict[str, str]] = {c: {} for c in columns}
        for row in reader:
            for c in columns:
                if row.get(c):
                    sets[c][sanitize_id(row["video_id"])] = row[c]
    return sets


def decoded_rows(ws: Workspace) -> tuple[list, dict[str, int], dict[str, str]]:
    """The manifest's ok rows that have decoded frames, their frame counts, and the decode chunk fingerprints."""
    frames, fps = {}, {}
    for chunk, rec in ws.records("decode").items():
        fps[chunk] = upstream_key(rec)
        for vid, info in rec.videos.items():
            if info.get("status") == "ok" and info.get("frames", 0) > 0:
                frames[vid] = int(info["frames"])
    rows = [r for r in read_manifest(ws) if r.ok and r.video_id in frames]
    if not rows:
        raise missing_stage(ws, "no decoded video to train on", "decode")
    return rows, frames, fps


def frames_key(config: PipelineConfig, ws: Workspace, rows: list, train_ids: list[str], frames: dict[str, int],
               decode_fps: dict[str, str]) -> str:
    """What the decoded frames of the training videos were made from, and nothing else.

    When every decode chunk holding a training video is current (its record has the fingerprint the present decode
    settings and code plan for it), a training video's frames follow from its content fingerprint, the decode settings
    and the decode code: keyed on those, a video added to the workspace (a test video) or a decode chunk recomputed for
    another video's sake changes no training key. The decode settings that only lay the frames out on disk
    (``decode.time_chunk``, the Zarr chunking along time) are left out: the frames are the same. Otherwise the frames on
    disk are older than the settings and the decode chunks' record fingerprints stand in (a decode rerun will change
    the frames, and then the key).
    """
    plans = plan_decode(config, ws)
    train = set(train_ids)
    chunks = sorted(c for c, plan in plans.items() if train & set(plan["videos"]))
    # current: keyed as planned, or made before behaviour versions with the key they had then (re-keyed when decode
    # runs next; the training key must not depend on whether it has run since the upgrade)
    if all(decode_fps.get(c) in (plans[c]["fingerprint"], plans[c].get("legacy", {}).get("fingerprint"))
           for c in chunks):
        content = {r.video_id: r.fingerprint for r in rows}
        layout = {} if legacy() else {"time_chunk": DecodeConfig.model_fields["time_chunk"].default}
        decode = config.decode.model_copy(update=layout)  # legacy keys held the time chunking
        return hash_json({"decode": [decode.config_hash(), decode_code(config)],
                          "videos": {v: [content[v], frames[v]] for v in train_ids}})
    return hash_json({c: decode_fps.get(c) for c in chunks})


def plan_train_stage(stage: str, config: PipelineConfig, progress: bool = True) -> dict:
    """The training task's arguments for ``stage`` on the config's workspace (keys, ids, labels, settings): what the
    flow submits, and what every process of an ``idtprior train-stage`` job computes again."""
    ws = Workspace(config.workspace)
    if not ws.is_local:
        raise ConfigError(f"training stages write checkpoints to a local folder; workspace {ws.url} is not local")
    shared, stage_cfg = config.pretrain, getattr(config, stage)
    rows, frames, decode_fps = decoded_rows(ws)
    eval_ids = sorted(r.video_id for r in rows)
    train_ids = sorted(r.video_id for r in rows if shared.train_split is None or r.split == shared.train_split)
    if not train_ids:
        raise ConfigError(f"pretrain.train_split {shared.train_split!r}: no decoded video of the manifest is in it")
    inputs = {"frames": frames_key(config, ws, rows, train_ids, frames, decode_fps), "train_ids": hash_json(train_ids)}
    # the records the task reads, as planned here: it checks them when it starts and before it commits
    upstream = {"decode": planned(ws.records("decode"))}
    if stage_cfg.objective == "la" and stage_cfg.cluster_source == "idt":
        rec = ws.read_record("cluster", ALL)
        if rec is None:
            raise missing_stage(ws, f"{stage} uses the IDT clusters, and there are none", "cluster")
        inputs["clusters"] = upstream_key(rec)
        upstream["cluster"] = {ALL: rec.content_key}
    if stage_cfg.objective == "la" and stage_cfg.cluster_source == "joint":
        records = ws.records("encode")
        encoded = {c: upstream_key(r) for c, r in records.items()}
        if not encoded:
            raise missing_stage(ws, f"{stage} clusters [bank | IDT sketch], and there are no sketches", "encode")
        inputs["sketches"] = hash_json(encoded)
        upstream["encode"] = planned(records)
    init_checkpoint = None
    if stage_cfg.init_from:
        rec = ws.read_record(stage_cfg.init_from, ALL)
        if rec is None:
            raise ConfigError(f"{stage} starts from {stage_cfg.init_from} (init_from), which has not run in "
                              f"{ws.url}; run it first ({how_to_run(stage_cfg.init_from)}) or set {stage}.init_from: null")
        init_checkpoint = rec.videos["model"]["checkpoint"]
        upstream[stage_cfg.init_from] = {ALL: rec.content_key}
        # what the stage trained, not how it was evaluated: a new label file or knn_k must not retrain this stage
        # (records written before the train fingerprint was stored fall back to the whole fingerprint)
        inputs["init"] = upstream_train_key(rec.videos["model"], rec.fingerprint)
    label_sets = {"label": {r.video_id: r.label for r in rows if r.label}}
    if shared.eval_labels_file:
        for name, values in read_label_sets(shared.eval_labels_file).items():
            label_sets.setdefault(name, values)
    label_sets = {k: v for k, v in label_sets.items() if v}
    if stage_cfg.objective == "supervised":  # the labels are what it trains on: a relabelled video retrains it
        labelled = supervised_labels(stage, label_sets, stage_cfg.label_column, train_ids)[0]
        inputs["labels"] = hash_json({v: label_sets[stage_cfg.label_column][v] for v in labelled})
    train_config = train_config_fields(shared)
    train_fp = chunk_fingerprint(stage, ALL, inputs, hash_json([train_config, stage_cfg.model_dump(mode="json")]),
                                 code_key("pretrain"))
    # every training input but the schedule's end: a run set to more epochs continues the shorter run that has this key
    resume_key = chunk_fingerprint(stage, ALL, inputs, hash_json(
        [train_config, stage_cfg.model_dump(mode="json", exclude={"epochs"})]), code_key("pretrain"))
    splits = {r.video_id: r.split for r in rows}
    fingerprint = hash_json({"train": train_fp, "eval_ids": eval_ids, "knn_k": shared.knn_k,
                             "labels": hash_json(label_sets), "splits": hash_json(splits)})
    plan = {
        "fingerprint": fingerprint, "train_fingerprint": train_fp, "resume_key": resume_key, "train_ids": train_ids,
        "train_frames": [frames[v] for v in train_ids], "eval_ids": eval_ids,
        "eval_frames": [frames[v] for v in eval_ids], "splits": splits, "label_sets": label_sets, "shared": shared,
        "stage_config": stage_cfg, "init_checkpoint": init_checkpoint, "progress": progress, "upstream": upstream}
    return with_legacy_keys(ws, stage, {ALL: plan}, lambda: {ALL: plan_train_stage(stage, config, progress)})[ALL]


def train_stage_command(config: PipelineConfig, stage: str, fingerprint: str | None = None,
                        prepare_only: bool = False, progress: bool = False):
    """``idtprior train-stage``: the stage's plan from ``config``, then ``train_stage`` in this process as one of a
    DDP job's (srun's on every node, or Lightning's own for several devices here). Returns the committed record on
    global rank 0, None on the others. ``fingerprint``: the record key the submitter planned; a differing plan (the
    workspace or the settings changed since) trains nothing. ``prepare_only``: ready the run folder and stop (the
    batch script does it in one process before srun starts the ranks)."""
    plan = plan_train_stage(stage, config, progress)
    plan.pop("legacy", None)  # what status reads; the stage's launcher re-keyed the record (``registry.upgrade_keys``)
    if fingerprint is not None and plan["fingerprint"] != fingerprint:
        raise ConfigError(f"{stage}: workspace {config.workspace} now plans the record key {plan['fingerprint'][:12]}, "
                          f"not {fingerprint[:12]} as submitted: its inputs or settings changed since; run the stage "
                          f"again")
    ws = Workspace(config.workspace)
    if prepare_only:
        prepare_stage_run(ws.url, stage, ALL, **plan)
        return None
    return train_stage(ws.url, stage, ALL, **plan, launched=True)


def train_stage_flow_body(stage: str, config: PipelineConfig, progress: bool) -> dict:
    ws = Workspace(config.workspace)
    plan = plan_train_stage(stage, config, progress)
    if config.pretrain.launcher == "slurm" or config.pretrain.num_nodes > 1:
        # srun starts one process per device on every node, which a task's own process cannot: the stage runs as a
        # batch job of `idtprior train-stage`, and this task waits for it
        task, kwargs = train_stage_job_task, {"fingerprint": plan["fingerprint"], "config": config,
                                                        "progress": progress}
    else:
        task, kwargs = train_stage_task, plan
    # one display per stage, in epochs: the terminal's, a progress artifact and a table of the epochs, fed live by the
    # task where it trains in this process, and set from the run's logs at the end (a resumed run's earlier epochs too)
    run_dir = Path(ws.path("runs", stage)) / plan["train_fingerprint"][:16]
    display = EpochProgress(ws, stage, getattr(config, stage).epochs, get_run_logger(), progress,
                            rows=epoch_rows(run_dir))
    try:
        records = run_chunks(task, ws, stage, {ALL: kwargs}, progress, 1, progress_artifact=False, display=display)
    except BaseException:
        display.close("failed")
        raise
    info = records[ALL].videos["model"]
    display.complete(epoch_rows(Path(info["run_dir"])))
    display.close(", ".join(f"kNN {name} {acc:.3f}" for name, acc in sorted(info["knn"].items())))
    _report(ws, stage, info)
    counts = {"stage": stage, "chunks": 1, "videos_ok": info["train_videos"], "videos_failed": 0,
              "epochs": info["epochs"]}
    if "unlabelled_videos" in info:
        counts["videos_unlabelled"] = info["unlabelled_videos"]
    if info["loss_per_epoch"]:
        counts["loss_first"], counts["loss_last"] = info["loss_per_epoch"][0], info["loss_per_epoch"][-1]
    counts.update({f"knn_{k}": v for k, v in info["knn"].items()})
    counts.update({f"knn_init_{k}": v for k, v in info.get("knn_init", {}).items()})
    return counts


def _report(ws: Workspace, stage: str, info: dict) -> None:
    from idtprior.stages.common import stage_pictures

    losses = info["loss_per_epoch"]
    objective = info["objective"] + (f" / {info['cluster_source']}" if "cluster_source" in info else "")
    if "label_column" in info:
        objective += (f" on label {info['label_column']!r} ({info['classes']} classes; {info['unlabelled_videos']} "
                      f"training videos without one left out)")
    md = (f"## {stage}\n\n{info['train_videos']} training videos, {info['epochs']} epochs, objective "
          f"{objective}; loss per epoch {losses}\n\nkNN accuracy of the exported embeddings ({info['eval_videos']} "
          f"videos; test split against the rest), and the loss, lr and kNN monitor per epoch:\n\n"
          + stage_pictures(stage, training_markdown, ws, stage) + f"\nencoder: `{info['encoder']}`\n"
          + "".join(f"\n- {line}" for line in provenance_lines(ws, stage, [ALL])))
    create_markdown_artifact(key=artifact_key(ws, stage, "summary"), markdown=md)
    get_run_logger().info(f"{stage}: knn {info['knn']}, init {info.get('knn_init')}, loss {losses}")


@stage_flow("pretrain_ir")
def pretrain_ir_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """Instance Recognition warm-up of the 3D ResNet on the decoded frames."""
    return train_stage_flow_body("pretrain_ir", config, progress)


@stage_flow("pretrain_la")
def pretrain_la_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """Local Aggregation with the IDT clusters (or the bank's, for plain Video LA), from the IR model."""
    return train_stage_flow_body("pretrain_la", config, progress)


@stage_flow("tune_joint")
def tune_joint_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """Local Aggregation in the joint [memory bank | IDT sketch] space, from the LA model."""
    return train_stage_flow_body("tune_joint", config, progress)


@stage_flow("pretrain_la_bank")
def pretrain_la_bank_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """Video LA, the baseline: Local Aggregation with K-means of the memory bank every epoch, from the IR model."""
    return train_stage_flow_body("pretrain_la_bank", config, progress)


@stage_flow("supervised")
def supervised_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """The supervised upper bound: the same network trained with cross-entropy on the training split's labels."""
    return train_stage_flow_body("supervised", config, progress)


TRAIN_FLOWS = {"pretrain_ir": pretrain_ir_flow, "pretrain_la": pretrain_la_flow, "tune_joint": tune_joint_flow,
               "pretrain_la_bank": pretrain_la_bank_flow, "supervised": supervised_flow}


def knn_table(info: dict) -> str:
    """The kNN accuracy per label column of a training record's model info: after training, at random init."""
    from idtprior.stages.pictures import table_md

    sets = sorted(info.get("knn", {}))
    if not sets:
        return "_No kNN result._\n"
    rows = [["after training", *(f"{info['knn'][s]:.3f}" for s in sets)]]
    if "knn_init" in info:
        rows.append(["random init", *(f"{info['knn_init'].get(s, float('nan')):.3f}" for s in sets)])
    return table_md(["network", *sets], rows)


def training_images(ws: Workspace, stage: str) -> tuple[dict, dict[str, bytes]]:
    """A training stage's record info and its curves' PNGs (``training_curves`` of the run's epoch rows)."""
    from idtprior.evaluation.figures import training_curves
    from idtprior.stages.pretrain.task import epoch_rows

    rec = ws.read_record(stage, "all")
    if rec is None or "model" not in rec.videos:
        return {}, {}
    info = rec.videos["model"]
    run_dir = Path(info.get("run_dir", ""))
    return info, training_curves(epoch_rows(run_dir)) if run_dir.is_dir() else {}


def training_markdown(ws: Workspace, stage: str) -> str:
    """Loss, learning-rate and kNN curves per epoch of a training stage (its run's csv logs) and its kNN table."""
    from idtprior.evaluation.figures import markdown_image
    from idtprior.stages.pictures import IMAGE_BYTES

    info, curves = training_images(ws, stage)
    if not info:
        return f"_No record of {stage}._\n"
    md = f"### {stage}: kNN accuracy\n\n{knn_table(info)}\n"
    for name, png in curves.items():
        md += markdown_image(f"{stage} {name}", png, IMAGE_BYTES) + "\n"
    return md
