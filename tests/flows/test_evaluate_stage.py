"""The evaluate stage on the real Prefect engine: an evaluation workspace (ingest + decode of a UCF101-style split
list) evaluates the networks of a separate pretraining workspace, one record per (network, protocol, clip length)."""

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from idtprior.config import PipelineConfig
from idtprior.config.base import ConfigError
from idtprior.config.training import EVALUATION_NETWORKS
from idtprior.evaluation.finetune import FinetuneParams, finetune
from idtprior.evaluation.metrics import mcnemar_exact
from idtprior.evaluation.probe import extract_features, few_shot_table
from idtprior.evaluation.report import evaluation_tables, paired_tests
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.models import load_encoder
from idtprior.runtime.artifacts import artifact_key
from idtprior.stages.evaluate import task as evaluate_tasks
from idtprior.stages.evaluate.flow import plan_evaluate
from idtprior.stages.evaluate.task import read_evaluation
from idtprior.stages.pretrain.task import WorkspaceClipSource, initial_encoder
from idtprior.storage import Workspace
from idtprior.storage.frames import FrameStore
from idtprior.video.io import write_video
from idtprior_testutils import knn_reference, moving_square_frames, write_moving_square_videos

pytestmark = pytest.mark.usefixtures("prefect_engine")

TINY = {"width": 0.125, "embed_dim": 8, "clip_length": 4, "crop_size": 32, "batch_size": 4, "negatives": 8,
        "num_workers": 0, "accelerator": "cpu"}
CLASSES = ("Left", "Right")


def pretraining_workspace(tmp_path: Path, epochs: int = 1) -> PipelineConfig:
    """6 unlabelled videos, ingested, decoded and trained with IR (TINY network)."""
    src = tmp_path / "pre-videos"
    write_moving_square_videos(src, 6)
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "pre"), "stages": ["ingest", "decode", "pretrain_ir"],
        "ingest": {"source": str(src), "num_chunks": 2}, "decode": {"short_side": 32}, "dask": {"n_workers": 0},
        "pretrain": TINY, "pretrain_ir": {"epochs": epochs}})
    pretrain_pipeline(cfg, progress=False)
    return cfg


def evaluation_workspace(tmp_path: Path, pre: PipelineConfig, per_class: int = 4, **evaluate) -> PipelineConfig:
    """A UCF101-style labelled set (trainlist01/testlist01; two classes: a square moving left or right), ingested and
    decoded in its own workspace; evaluate reads ``pre``'s networks."""
    root, splits = tmp_path / "ucf" / "videos", tmp_path / "ucf" / "splits"
    splits.mkdir(parents=True)
    train, test = [], []
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for g in range(per_class):
            frames = moving_square_frames(12, seed=100 + 10 * c + g)
            rel = f"{name}/v_{name}_g{g:02d}_c01.mp4"
            write_video(root / rel, frames[:, :, ::-1] if c == 0 else frames, fps=25, options={"preset": "ultrafast"})
            (test if g == per_class - 1 else train).append(rel)
    (splits / "trainlist01.txt").write_text("".join(f"{r} {1 + CLASSES.index(r.split('/')[0])}\n" for r in train))
    (splits / "testlist01.txt").write_text("".join(f"{r}\n" for r in test))
    settings = {"pretrain_workspace": pre.workspace, "networks": ["scratch", "pretrain_ir"],
                "protocols": ["finetune", "probe", "knn"], "clip_lengths": [8], "epochs": 2, "batch_size": 4,
                "plateau_patience": 0, "val_fraction": 0.25, "test_clips": 2, "shots": [1, "all"], "shot_seeds": 2,
                "knn_k": 3, "device": "cpu", "num_workers": 0, **evaluate}
    settings = {k: v for k, v in settings.items() if v is not None}  # None: the default
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "eval"), "stages": ["ingest", "decode", "evaluate"],
        "ingest": {"source": str(splits / "trainlist01.txt"), "video_root": str(root), "num_chunks": 2},
        "decode": {"short_side": 32}, "dask": {"n_workers": 0}, "evaluate": settings})
    pretrain_pipeline(cfg, stages=["ingest", "decode"], progress=False)
    return cfg


def record_times(ws: Workspace) -> dict[str, float]:
    return {c: r.created for c, r in ws.records("evaluate").items()}


def workspace_files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def summary_markdown(ws: Workspace) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[artifact_key(ws, "evaluate", "summary")])), sort=ArtifactSort.CREATED_DESC)
    return found[0].data


def test_evaluate_records_match_the_cores_and_rerun_cached(tmp_path, one_thread):
    pre = pretraining_workspace(tmp_path)
    pre_root = Path(pre.workspace)
    pre_before = workspace_files(pre_root)
    cfg = evaluation_workspace(tmp_path, pre)
    pretrain_pipeline(cfg, stages=["evaluate"], progress=False)
    ws = Workspace(cfg.workspace)
    records = ws.records("evaluate")
    assert sorted(records) == sorted(f"{n}.{p}.8" for n in ("scratch", "pretrain_ir")
                                     for p in ("finetune", "probe", "knn"))
    results = {c: r.videos["result"] for c, r in records.items()}
    assert all(r.version == "" and list(r.videos) == ["result"] for r in records.values())
    assert sorted(read_evaluation(ws), key=lambda r: (r["network"], r["protocol"])) == sorted(
        results.values(), key=lambda r: (r["network"], r["protocol"]))
    ir_info = pre_root.joinpath("records", "pretrain_ir", "all.json")
    ir_model = json.loads(ir_info.read_text())["videos"]["model"]
    test_ids = [f"v_{c}_g03_c01" for c in CLASSES]
    train_ids = sorted(f"v_{c}_g{g:02d}_c01" for c in CLASSES for g in range(3))
    for chunk, r in results.items():
        network, protocol, length = chunk.split(".")
        assert (r["status"], r["network"], r["protocol"], r["clip_length"], r["label_column"], r["classes"]) == (
            "ok", network, protocol, int(length), "label", list(CLASSES))
        assert r["train_fingerprint"] == (ir_model["train_fingerprint"] if network == "pretrain_ir"
                                          else r["train_fingerprint"]) and r["seconds"] >= 0
        if network == "scratch":
            assert r["train_fingerprint"].startswith("scratch:")

    # the reference: the cores called directly on the same frames, labels and settings
    train = WorkspaceClipSource(ws.url, train_ids, [12] * 6)
    test = WorkspaceClipSource(ws.url, sorted(test_ids), [12] * 2)
    y_train = np.array([CLASSES.index(v.split("_")[1]) for v in train_ids])
    y_test = np.array([CLASSES.index(v.split("_")[1]) for v in sorted(test_ids)])
    encoders = {"pretrain_ir": load_encoder(ir_model["encoder"]), "scratch": initial_encoder(pre.pretrain)}
    params = FinetuneParams(epochs=2, batch_size=4, plateau_patience=0, val_fraction=0.25, test_clips=2,
                            clip_length=8, crop_size=32, frame_step=1, crop_scales=pre.pretrain.crop_scales,
                            frozen_blocks=1, seed=0, device="cpu")
    for network, encoder in encoders.items():
        ft = results[f"{network}.finetune.8"]
        ref = finetune(encoder, train, y_train, test, y_test, params, n_classes=2)
        assert ft["accuracy"] == ref.test_accuracy
        assert ft["predictions"] == {v: int(p) for v, p in zip(sorted(test_ids), ref.test_predictions)}
        assert ft["correct"] == {v: bool(p == t) for v, p, t in zip(sorted(test_ids), ref.test_predictions, y_test)}
        assert [h["loss"] for h in ft["history"]] == [h["loss"] for h in ref.history]
        assert (ft["frozen_blocks"], ft["n_train"], ft["n_val"], ft["n_test"]) == (1, 4, 2, 2)  # UCF101: 1 block
        feats = [extract_features(encoder, s, None, 8, 32, 2, 0, 1, 4, "backbone", "cpu") for s in (train, test)]
        table = few_shot_table(feats[0], y_train, feats[1], y_test, shots=(1, None), seeds=(0, 1))
        assert results[f"{network}.probe.8"]["table"] == table
        assert set(results[f"{network}.probe.8"]["correct"]) == {"1", "all"}
        knn = results[f"{network}.knn.8"]
        assert set(knn["knn"]) == {"label"} and set(knn["correct"]["label"]) == set(test_ids)
        assert knn["knn"]["label"] == np.mean(list(knn["correct"]["label"].values()))
        emb = [extract_features(encoder, s, None, 8, 32, 2, 0, 1, 4, "embedding", "cpu") for s in (train, test)]
        unit = [e / np.linalg.norm(e, axis=1, keepdims=True) for e in emb]  # as the protocol normalises them
        assert knn["knn"]["label"] == pytest.approx(
            knn_reference(unit[0], y_train, unit[1], y_test, k=3, tau=cfg.evaluate.knn_tau), abs=1e-12)
        assert 0 <= knn["nmi"]["label"] <= 1 and 0.5 <= knn["purity"]["label"] <= 1

    # the stage read its videos' frames into memory once and freed them when it ended
    assert evaluate_tasks._FRAMES == {}

    # the probe and the kNN of a network shared one pass over its clips: one kept entry per network
    assert sorted(k[2] for k in evaluate_tasks._FEATURES if k[0] == ws.url) == sorted(
        r["train_fingerprint"] for r in results.values() if r["protocol"] == "knn")

    # the summary artifact: the tables and the paired test of scratch against pretrain_ir on the finetuning
    md = summary_markdown(ws)
    assert md == evaluation_tables(results.values())
    assert "Table 1" in md and "Table 2" in md and "NMI" in md
    pair = [t for t in paired_tests(results.values()) if t["what"] == "finetune"]
    a, b = results["scratch.finetune.8"]["correct"], results["pretrain_ir.finetune.8"]["correct"]
    want = mcnemar_exact(np.array([a[v] for v in sorted(a)]), np.array([b[v] for v in sorted(a)]))
    assert [(t["a"], t["b"], t["only_a"], t["only_b"], t["p_value"]) for t in pair] == [
        ("scratch", "pretrain_ir", want.only_a, want.only_b, want.p_value)]

    # a rerun recomputes nothing; the pretraining workspace was only read: no evaluation video entered it
    before = record_times(ws)
    pretrain_pipeline(cfg, stages=["evaluate"], progress=False)
    assert record_times(ws) == before
    assert workspace_files(pre_root) == pre_before
    text = "".join(p.read_text(errors="replace") for p in pre_root.rglob("*") if p.is_file()
                   and p.suffix in (".json", ".csv", ".yaml"))
    assert "v_Left" not in text and "v_Right" not in text

    # a network listed by hand and never trained fails the stage's plan (before anything runs), naming the stage to
    # run first; with the default list it is skipped and named
    with pytest.raises(ConfigError, match="network pretrain_la has not been trained.*run the pretrain_la stage"):
        plan_evaluate(cfg.with_updates(evaluate={"networks": ["scratch", "pretrain_la"]}), ws)
    skipped = []
    default = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"networks": EVALUATION_NETWORKS})})
    assert sorted(plan_evaluate(default, ws, skipped)) == sorted(records)
    assert skipped == ["pretrain_la_bank", "pretrain_la", "tune_joint", "supervised"]


def test_evaluation_frames_are_read_once_into_memory_and_give_the_stores_clips(tmp_path, monkeypatch):
    cfg = evaluation_workspace(tmp_path, SimpleNamespace(workspace=str(tmp_path / "no-pretraining")))
    ws = Workspace(cfg.workspace)
    plan = plan_evaluate(cfg.with_updates(evaluate={"networks": ["scratch"]}), ws)["scratch.knn.8"]
    args = (ws.url, plan["train_ids"], plan["train_frames"], plan["test_ids"], plan["test_frames"])
    reads = []
    real_read = FrameStore.read_clip
    monkeypatch.setattr(FrameStore, "read_clip", lambda self, *a: reads.append(a) or real_read(self, *a))
    try:
        train, test = evaluate_tasks.evaluation_sources(*args, plan["videos_key"], 2**20)
        assert isinstance(train, evaluate_tasks.MemoryClipSource) and isinstance(test, evaluate_tasks.MemoryClipSource)
        assert sorted(reads) == sorted((v, 0, 12) for v in plan["train_ids"] + plan["test_ids"])  # each video once
        again = evaluate_tasks.evaluation_sources(*args, plan["videos_key"], 2**20)
        assert len(reads) == 8 and again[0]._frames_of is train._frames_of  # the second evaluation reads nothing
        stores = (WorkspaceClipSource(ws.url, plan["train_ids"], plan["train_frames"]),
                  WorkspaceClipSource(ws.url, plan["test_ids"], plan["test_frames"]))
        for memory, store in zip((train, test), stores):
            assert memory.video_ids == store.video_ids and len(memory) == len(store)
            for i in range(len(store)):
                for start, length in ((0, 12), (3, 5), (11, 1)):
                    np.testing.assert_array_equal(memory.read_clip(i, start, length),
                                                  store.read_clip(i, start, length))
        clip = train.read_clip(0, 2, 4)
        assert not clip.flags.writeable  # a caller writing into a kept clip fails instead of changing the next ones
        with pytest.raises(ValueError, match=rf"video {plan['train_ids'][0]}: clip \[10, 14\) outside its 12"):
            train.read_clip(0, 10, 4)
        # pickled (a spawned loader worker) it reads the store: the same frames
        reads.clear()
        spawned = pickle.loads(pickle.dumps(train))
        np.testing.assert_array_equal(spawned.read_clip(1, 0, 12), train.read_clip(1, 0, 12))
        assert reads == [(plan["train_ids"][1], 0, 12)]
        # another content key replaces the kept frames; over the budget, or without a key, the store is read
        evaluate_tasks.evaluation_sources(*args, "another key", 2**20)
        assert list(evaluate_tasks._FRAMES) == [(ws.url, "another key")]
        for key, budget in ((plan["videos_key"], 0), (None, 2**20)):
            sources = evaluate_tasks.evaluation_sources(*args, key, budget)
            assert [type(s) for s in sources] == [WorkspaceClipSource] * 2
        evaluate_tasks.release_frames()
        need = 8 * 12 * 32 * 43 * 3  # 8 videos of 12 frames of 32 x 43 (4:3 at short side 32)
        assert sum(a.nbytes for a in train._frames_of.values()) == need
        sources = evaluate_tasks.evaluation_sources(*args, plan["videos_key"], need - 1)
        assert [type(s) for s in sources] == [WorkspaceClipSource] * 2 and evaluate_tasks._FRAMES == {}
        sources = evaluate_tasks.evaluation_sources(*args, plan["videos_key"], need)
        assert [type(s) for s in sources] == [evaluate_tasks.MemoryClipSource] * 2
    finally:
        evaluate_tasks.release_frames()


@pytest.mark.slow
def test_new_clip_lengths_and_a_retrained_network_recompute_only_their_records(tmp_path, one_thread, monkeypatch):
    from idtprior.stages.registry import expected_fingerprints

    pre = pretraining_workspace(tmp_path)
    cfg = evaluation_workspace(tmp_path, pre, protocols=["finetune", "knn"], networks=None)
    ws = Workspace(cfg.workspace)
    # the default network list: the stages not trained in the pretraining workspace are skipped
    result = pretrain_pipeline(cfg, stages=["evaluate"], progress=False)
    assert sorted(ws.records("evaluate")) == sorted(f"{n}.{p}.8" for n in ("scratch", "pretrain_ir")
                                                    for p in ("finetune", "knn"))
    assert "finetune_pretrain_ir_8" in result["evaluate"]
    assert "Skipped (not trained in the pretraining workspace): pretrain_la_bank, pretrain_la, tune_joint, " \
           "supervised" in summary_markdown(ws)
    first = record_times(ws)
    # a clip length added: only its records are computed
    longer = cfg.with_updates(evaluate={"clip_lengths": [8, 16]})
    assert expected_fingerprints(longer.model_copy(update={"stages": ("evaluate",)}), ws)["evaluate"].keys() == {
        f"{n}.{p}.{k}" for n in ("scratch", "pretrain_ir") for p in ("finetune", "knn") for k in (8, 16)}
    # a fault after one new record's work, before its commit: the other records commit; the rerun computes that one
    monkeypatch.setenv("IDTPRIOR_FAULT", "evaluate:pretrain_ir.knn.16:once")
    with pytest.raises(RuntimeError, match="evaluate: 1 of 8 chunks failed; first: pretrain_ir.knn.16"):
        pretrain_pipeline(longer, stages=["evaluate"], progress=False)
    partial = record_times(ws)
    assert "pretrain_ir.knn.16" not in partial and len(partial) == 7
    pretrain_pipeline(longer, stages=["evaluate"], progress=False)
    second = record_times(ws)
    assert {c: t for c, t in second.items() if c in partial} == partial
    assert sorted(set(second) - set(first)) == sorted(f"{n}.{p}.16" for n in ("scratch", "pretrain_ir")
                                                      for p in ("finetune", "knn"))
    assert all(r["clip_length"] in (8, 16) for r in read_evaluation(ws))
    # pretrain_ir retrained with a changed setting: only its evaluations are recomputed
    pretrain_pipeline(pre.with_updates(pretrain_ir={"epochs": 2}), stages=["pretrain_ir"], progress=False)
    expected = expected_fingerprints(longer.model_copy(update={"stages": ("evaluate",)}), ws)["evaluate"]
    stale = {c for c, fp in expected.items() if ws.read_record("evaluate", c).fingerprint != fp}
    assert stale == {c for c in second if c.startswith("pretrain_ir.")}
    pretrain_pipeline(longer, stages=["evaluate"], progress=False)
    third = record_times(ws)
    changed = {c for c in third if third[c] != second[c]}
    assert changed == stale
    ir = json.loads(Path(pre.workspace, "records", "pretrain_ir", "all.json").read_text())["videos"]["model"]
    assert all(r["train_fingerprint"] == ir["train_fingerprint"] for r in read_evaluation(ws)
               if r["network"] == "pretrain_ir")


def test_report_tables_percent_of_supervised_and_paired_tests_in_the_methods_order():
    def finetune_result(network, accuracy, correct):
        return {"status": "ok", "network": network, "protocol": "finetune", "clip_length": 16, "label_column": "label",
                "accuracy": accuracy, "correct": {f"v{i}": c for i, c in enumerate(correct)}}

    results = [finetune_result("tune_joint", 0.6, [1, 1, 1, 0, 0]), finetune_result("supervised", 0.8, [1] * 5),
               finetune_result("scratch", 0.2, [1, 0, 0, 0, 0]), finetune_result("pretrain_ir", 0.4, [1, 1, 0, 0, 0])]
    md = evaluation_tables(results)
    table1 = md.split("**Table 1")[1].split("\n\n**")[0]
    rows = [line for line in table1.splitlines() if line.startswith("| ") and "network" not in line]
    # the paper's row order, whatever the order of the results; each cell's share of the supervised accuracy
    assert rows == ["| scratch | 20.0 (25% of supervised) |", "| pretrain_ir | 40.0 (50% of supervised) |",
                    "| tune_joint | 60.0 (75% of supervised) |", "| supervised | 80.0 |"]
    # consecutive networks present in scratch < pretrain_ir < pretrain_la_bank < pretrain_la < tune_joint (absent
    # ones skipped, supervised not paired), each test over the same videos
    tests = paired_tests(results)
    assert [(t["a"], t["b"], t["only_a"], t["only_b"], t["videos"]) for t in tests] == [
        ("scratch", "pretrain_ir", 0, 1, 5), ("pretrain_ir", "tune_joint", 0, 1, 5)]
    assert all(t["p_value"] == 1.0 for t in tests)  # one discordant video: p = min(1, 2 * 0.5)
    assert "| finetune | label | 16 | scratch | pretrain_ir | 5 | 0 | 1 | 1 |" in md
