"""The baselines of the paper's tables as stages of their own (Video LA: ``pretrain_la_bank``; the supervised upper
bound: ``supervised``), beside the method's stages in one workspace, on the real Prefect engine."""

from pathlib import Path

import pytest
import torch

from idtprior.config import PipelineConfig
from idtprior.config.base import ConfigError
from idtprior.flows.pipeline import FLOWS, pretrain_pipeline
from idtprior.stages.pretrain.flow import plan_train_stage
from idtprior.storage import Workspace
from idtprior_testutils import write_moving_square_videos

pytestmark = pytest.mark.usefixtures("prefect_engine")

TINY = {"width": 0.125, "embed_dim": 16, "clip_length": 4, "crop_size": 32, "batch_size": 4, "negatives": 8,
        "num_workers": 0, "accelerator": "cpu", "ir_exact": True}


def _files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` and its modification time (ns): a run that trained again, or a removal, shows."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _created(ws: Workspace, stages) -> dict[str, float]:
    return {s: ws.read_record(s, "all").created for s in stages}


def make_workspace(tmp_path: Path, n: int = 8) -> PipelineConfig:
    """``n`` decoded videos; a labels file (the manifest's label: 'x' or 'y' by thirds) with a 'motion' column: even
    videos 'a', odd 'b', the last one without; the one before it in the test split."""
    write_moving_square_videos(tmp_path / "videos", n)
    labels = tmp_path / "labels.csv"
    rows = [f"clip{i:03d},{'xy'[i % 3 == 0]},{'test' if i == n - 2 else 'train'},{'ab'[i % 2] if i < n - 1 else ''}"
            for i in range(n)]
    labels.write_text("video_id,label,split,motion\n" + "\n".join(rows) + "\n")
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode"],
        "ingest": {"source": str(tmp_path / "videos"), "num_chunks": 2, "labels_file": str(labels)},
        "decode": {"short_side": 32}, "dask": {"n_workers": 0},
        "pretrain": {**TINY, "train_split": "train", "eval_labels_file": str(labels)},
        "pretrain_ir": {"epochs": 1},
        # the two LA variants, told apart by their settings too: the IDT one as Video LA here (no IDT stages run)
        "pretrain_la": {"cluster_source": "bank", "n_clusters": 3, "kmeans_runs": 1, "epochs": 1},
        "pretrain_la_bank": {"n_clusters": 2, "kmeans_runs": 1, "epochs": 1},
        "supervised": {"label_column": "motion", "epochs": 1}})
    pretrain_pipeline(cfg, stages=["ingest", "decode"], progress=False)
    return cfg


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> PipelineConfig:
    """One decoded workspace for this module's default tests (each leaves it as it found it but for training runs of
    its own stages)."""
    return make_workspace(tmp_path_factory.mktemp("variants"))


def test_video_la_and_la_with_the_idt_prior_keep_their_own_record_and_run(decoded):
    """pretrain_la and pretrain_la_bank in one workspace (both from random weights here, and pretrain_la set to the
    bank's clusters: no IDT stages to run): a new setting of one retrains it alone, never touching the other's
    record or run folder; a second run of both recomputes nothing."""
    cfg = decoded.with_updates(pretrain_la={"init_from": None}, pretrain_la_bank={"init_from": None})
    ws = Workspace(cfg.workspace)
    runs = Path(ws.root) / "runs"
    stages = ["pretrain_la", "pretrain_la_bank"]
    for s in stages:  # each stage's own flow (what its deployment runs)
        FLOWS[s](cfg, None, False)
    info = {s: ws.read_record(s, "all").videos["model"] for s in stages}
    assert info["pretrain_la"]["train_fingerprint"] != info["pretrain_la_bank"]["train_fingerprint"]
    for s in stages:
        assert (info[s]["objective"], info[s]["cluster_source"]) == ("la", "bank")
        assert [p.name for p in (runs / s).iterdir()] == [info[s]["train_fingerprint"][:16]]
    la_files, la_created = _files(runs / "pretrain_la"), _created(ws, ["pretrain_la"])
    bank_created = _created(ws, ["pretrain_la_bank"])
    changed = cfg.with_updates(pretrain_la_bank={"n_clusters": 3})
    FLOWS["pretrain_la_bank"](changed, None, False)
    assert _created(ws, ["pretrain_la_bank"]) != bank_created
    assert len(list((runs / "pretrain_la_bank").iterdir())) == 1  # its superseded run removed
    assert _created(ws, ["pretrain_la"]) == la_created and _files(runs / "pretrain_la") == la_files
    before = _created(ws, stages)
    for s in stages:
        assert FLOWS[s](changed, None, False)["epochs"] == 1
    assert _created(ws, stages) == before


@pytest.mark.slow
def test_la_variants_and_supervised_keep_their_own_records_runs_and_keys(tmp_path):
    cfg = make_workspace(tmp_path)
    ws = Workspace(cfg.workspace)
    runs = Path(ws.root) / "runs"
    stages = ["pretrain_ir", "pretrain_la", "pretrain_la_bank", "supervised"]
    counts = pretrain_pipeline(cfg, stages=stages, progress=False)
    info = {s: ws.read_record(s, "all").videos["model"] for s in stages}
    assert info["pretrain_la_bank"]["cluster_source"] == "bank" and info["pretrain_la_bank"]["objective"] == "la"
    assert len({info[s]["train_fingerprint"] for s in stages}) == 4
    for s in stages:  # one run folder per stage, under the stage's name, the record pointing into it
        assert [p.name for p in (runs / s).iterdir()] == [info[s]["train_fingerprint"][:16]]
        assert info[s]["run_dir"] == str(runs / s / info[s]["train_fingerprint"][:16])
    # supervised: the 6 labelled training videos (the unlabelled one left out, counted; the test one held out), its
    # two classes reached the trainer in training order
    sup = info["supervised"]
    assert (sup["objective"], sup["label_column"], sup["classes"]) == ("supervised", "motion", 2)
    assert (sup["train_videos"], sup["unlabelled_videos"], sup["eval_videos"]) == (6, 1, 8)
    assert counts["supervised"]["videos_unlabelled"] == 1
    state = torch.load(sup["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert state["class_labels"].tolist() == [0, 1, 0, 1, 0, 1] and state["bank.bank"].shape == (6, 16)
    assert "knn_init" in sup and "motion" in sup["knn"]  # scratch, the same network at its seeded init

    # a new setting of one LA variant retrains it alone: the other's record and run folder are untouched
    files = {s: _files(runs / s) for s in stages}
    before = _created(ws, stages)
    pretrain_pipeline(cfg.with_updates(pretrain_la_bank={"n_clusters": 3}), stages=stages, progress=False)
    after = _created(ws, stages)
    assert after["pretrain_la_bank"] != before["pretrain_la_bank"]
    assert {s: after[s] for s in stages if s != "pretrain_la_bank"} == {
        s: before[s] for s in stages if s != "pretrain_la_bank"}
    assert {s: _files(runs / s) for s in stages if s != "pretrain_la_bank"} == {
        s: files[s] for s in stages if s != "pretrain_la_bank"}
    assert len(list((runs / "pretrain_la_bank").iterdir())) == 1  # its own superseded run removed, no other
    cfg = cfg.with_updates(pretrain_la_bank={"n_clusters": 3})
    files["pretrain_la_bank"] = _files(runs / "pretrain_la_bank")
    pretrain_pipeline(cfg.with_updates(pretrain_la={"n_clusters": 2}), stages=["pretrain_la"], progress=False)
    assert _created(ws, ["pretrain_la_bank"]) == {"pretrain_la_bank": after["pretrain_la_bank"]}
    assert _files(runs / "pretrain_la_bank") == files["pretrain_la_bank"]
    cfg = cfg.with_updates(pretrain_la={"n_clusters": 2})

    # a second run of everything recomputes nothing
    before = _created(ws, stages)
    pretrain_pipeline(cfg, stages=stages, progress=False)
    assert _created(ws, stages) == before


def test_supervised_key_follows_the_training_labels_and_a_missing_column_is_named(decoded):
    cfg = decoded
    labels = Path(cfg.pretrain.eval_labels_file)
    text = labels.read_text()
    plan = plan_train_stage("supervised", cfg, progress=False)
    ir = plan_train_stage("pretrain_ir", cfg, progress=False)  # before any relabelling
    assert plan["train_ids"] == [f"clip{i:03d}" for i in (0, 1, 2, 3, 4, 5, 7)]  # the unlabelled one among them
    # a training video relabelled: a new training key (it trains again)
    assert "clip002,x,train,a" in text and "clip006,y,test,a" in text
    labels.write_text(text.replace("clip002,x,train,a", "clip002,x,train,b"))
    relabelled = plan_train_stage("supervised", cfg, progress=False)
    assert relabelled["train_fingerprint"] != plan["train_fingerprint"]
    # a test video relabelled: the same training key, only the evaluation's key changes
    labels.write_text(text.replace("clip006,y,test,a", "clip006,y,test,b"))
    retested = plan_train_stage("supervised", cfg, progress=False)
    assert retested["train_fingerprint"] == plan["train_fingerprint"]
    assert retested["fingerprint"] != plan["fingerprint"]
    # the other stages do not train on labels: after both relabellings their training keys are the ones before
    assert plan_train_stage("pretrain_ir", cfg, progress=False)["train_fingerprint"] == ir["train_fingerprint"]
    assert plan_train_stage("pretrain_ir", cfg, progress=False)["fingerprint"] != ir["fingerprint"]  # re-evaluated
    labels.write_text(text)
    assert plan_train_stage("supervised", cfg, progress=False)["train_fingerprint"] == plan["train_fingerprint"]
    with pytest.raises(ConfigError, match=r"supervised: label_column 'genre': none of the 7 training videos has a "
                                          r"label in it \(label sets with values: \['label', 'motion'\]\)"):
        pretrain_pipeline(cfg.with_updates(supervised={"label_column": "genre"}), stages=["supervised"],
                          progress=False)
    assert Workspace(cfg.workspace).read_record("supervised", "all") is None
