"""The training stages on the real Prefect engine, over a real workspace of decoded videos."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from idtprior.config import PipelineConfig
from idtprior.config.base import ConfigError
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.models import load_encoder
from idtprior.stages.pretrain.task import read_embeddings
from idtprior.storage import FrameStore, Workspace, read_manifest
from idtprior.video.io import write_video
from idtprior_testutils import knn_reference, moving_square_frames, write_moving_square_videos

pytestmark = pytest.mark.usefixtures("prefect_engine")

TINY = {"width": 0.125, "embed_dim": 16, "clip_length": 4, "crop_size": 32, "batch_size": 4, "negatives": 8,
        "num_workers": 0, "accelerator": "cpu"}


def make_workspace(tmp_path: Path, n: int = 10, **updates) -> PipelineConfig:
    src = tmp_path / "videos"
    write_moving_square_videos(src, n)
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode", "pretrain_ir", "pretrain_la"],
        "ingest": {"source": str(src), "num_chunks": 2}, "decode": {"short_side": 32}, "dask": {"n_workers": 0},
        "pretrain": TINY, "pretrain_ir": {"epochs": 2},
        # plain Video LA: clusters of the memory bank, recomputed every epoch
        "pretrain_la": {"cluster_source": "bank", "n_clusters": 3, "kmeans_runs": 2, "epochs": 1}})
    cfg = cfg.with_updates(**updates) if updates else cfg
    pretrain_pipeline(cfg, stages=["ingest", "decode"], progress=False)
    return cfg


def test_ir_then_plain_video_la_train_export_and_rerun_cached(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("video_id,label,split\n" + "".join(f"clip{i:03d},m{i % 2},train\n" for i in range(10)))
    cfg = make_workspace(tmp_path, ingest={"labels_file": str(labels)}, pretrain={"train_split": "train"})
    with pytest.raises(ConfigError, match="pretrain_la starts from pretrain_ir.*has not run"):
        pretrain_pipeline(cfg, stages=["pretrain_la"], progress=False)
    result = pretrain_pipeline(cfg, stages=["pretrain_ir", "pretrain_la"], progress=False)
    ws = Workspace(cfg.workspace)
    ids = sorted(r.video_id for r in read_manifest(ws))
    for stage in ("pretrain_ir", "pretrain_la"):
        emb, emb_ids = read_embeddings(ws, stage)
        assert emb_ids == ids and emb.shape == (10, 16)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        info = ws.read_record(stage, "all").videos["model"]
        assert Path(info["checkpoint"]).exists() and Path(info["encoder"]).exists()
        # the exported encoder reproduces the exported embeddings (centre clips, eval mode)
        from idtprior.models import compute_embeddings
        from idtprior.stages.pretrain.task import WorkspaceClipSource

        frames = [12] * len(ids)
        again = compute_embeddings(load_encoder(info["encoder"]), WorkspaceClipSource(ws.url, ids, frames), 4, 32,
                                   4, 0, device="cpu")
        np.testing.assert_allclose(again, emb, atol=1e-5)
    assert result["pretrain_ir"]["epochs"] == 2 and len(ws.read_record("pretrain_ir", "all").videos["model"][
        "loss_per_epoch"]) == 2
    la_info = ws.read_record("pretrain_la", "all").videos["model"]
    assert la_info["cluster_source"] == "bank" and la_info["epochs"] == 1
    # LA starts from the IR encoder: its first-epoch weights moved away from IR's, but not from a fresh init
    ir_enc = load_encoder(ws.read_record("pretrain_ir", "all").videos["model"]["encoder"]).state_dict()
    la_enc = load_encoder(la_info["encoder"]).state_dict()
    w = "conv1.weight" if "conv1.weight" in ir_enc else next(k for k in ir_enc if k.endswith("weight"))
    dist_ir_la = float((ir_enc[w] - la_enc[w]).norm())
    from idtprior.stages.pretrain.task import initial_encoder

    dist_init_la = float((initial_encoder(cfg.pretrain).state_dict()[w] - la_enc[w]).norm())
    assert dist_ir_la < dist_init_la

    before = {s: ws.read_record(s, "all").created for s in ("pretrain_ir", "pretrain_la")}
    pretrain_pipeline(cfg, stages=["pretrain_ir", "pretrain_la"], progress=False)  # nothing to do
    assert {s: ws.read_record(s, "all").created for s in before} == before
    # an evaluation setting and a test video added to the workspace (its decode chunk is recomputed) re-evaluate both
    # stages from their trained runs, training no epoch again: IR's key covers only the training videos' frames, and
    # LA's covers what IR trained, not how IR was evaluated
    runs = Path(ws.root) / "runs"
    trained = {s: _files(runs / s) for s in before}
    cfg = cfg.with_updates(pretrain={"knn_k": 3})
    write_video(tmp_path / "videos" / "clip010.mp4", moving_square_frames(12, seed=10), fps=25,
                options={"preset": "ultrafast"})
    labels.write_text(labels.read_text() + "clip010,m0,test\n")
    pretrain_pipeline(cfg, stages=["ingest", "decode", "pretrain_ir", "pretrain_la"], progress=False)
    for s, created in before.items():
        rec = ws.read_record(s, "all")
        info = rec.videos["model"]
        assert rec.created != created and (info["train_videos"], info["eval_videos"]) == (10, 11)
        assert _files(runs / s) == trained[s], f"{s} trained again"
        assert info["run_dir"] == str(runs / s / info["train_fingerprint"][:16])
    before = {s: ws.read_record(s, "all").created for s in before}
    # a new setting of the LA stage retrains LA only; the IR stage stays
    pretrain_pipeline(cfg.with_updates(pretrain_la={"n_clusters": 2}), stages=["pretrain_ir", "pretrain_la"],
                      progress=False)
    assert ws.read_record("pretrain_ir", "all").created == before["pretrain_ir"]
    assert ws.read_record("pretrain_la", "all").created != before["pretrain_la"]
    assert len(list((Path(ws.root) / "runs" / "pretrain_la").iterdir())) == 1  # the superseded run is removed


def _files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` and its modification time (ns): a run that trained again changes it."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _csv_epochs(run_dir: Path) -> dict[str, list[int]]:
    """{log folder of one start of the run: the epochs it trained}."""
    import csv

    out = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path, newline="") as f:
            out[path.parent.name] = sorted({int(r["epoch"]) for r in csv.DictReader(f) if r.get("loss_epoch")})
    return out


def test_bad_training_inputs_are_named_before_any_training(tmp_path):
    cfg = make_workspace(tmp_path, n=2)
    with pytest.raises(ConfigError, match="train_split 'nosuch'"):
        pretrain_pipeline(cfg.with_updates(pretrain={"train_split": "nosuch"}), stages=["pretrain_ir"], progress=False)
    bad = tmp_path / "labels.csv"
    bad.write_text("id,label\nclip000,a\n")
    with pytest.raises(ConfigError, match=f"eval_labels_file {bad}: needs a video_id column"):
        pretrain_pipeline(cfg.with_updates(pretrain={"eval_labels_file": str(bad)}), stages=["pretrain_ir"],
                          progress=False)
    with pytest.raises(ConfigError, match="local folder; workspace memory:///?idtprior-train-ws is not local"):
        pretrain_pipeline(cfg.with_updates(workspace="memory://idtprior-train-ws"), stages=["pretrain_ir"],
                          progress=False)
    assert not (Path(cfg.workspace) / "runs").exists()  # nothing was trained or half-written
    assert not Path("runs").exists() and not Path("idtprior-train-ws").exists()  # nor beside the caller
    assert len(FrameStore(Workspace(cfg.workspace)).video_ids) == 2  # the decoded frames are untouched


def test_knn_evaluation_uses_the_test_split_and_every_label_column(tmp_path):
    """Demo-style data: a UCF-style split and a labels CSV with extra columns; the random-init baseline is reported."""
    from idtprior.datasets.synthetic import make_demo_data

    make_demo_data(tmp_path / "data", videos_per_class=5, frames=16, width=64, height=48)  # groups of 4: 1 test group
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "ingest": {
            "source": str(tmp_path / "data" / "splits" / "trainlist01.txt"),
            "video_root": str(tmp_path / "data" / "videos"), "num_chunks": 2},
        "decode": {"short_side": 32}, "dask": {"n_workers": 0},
        "pretrain": {**TINY, "train_split": "train", "eval_labels_file": str(tmp_path / "data" / "labels.csv"),
                     "knn_k": 3},
        "pretrain_ir": {"epochs": 1}})
    result = pretrain_pipeline(cfg, stages=["ingest", "decode", "pretrain_ir"], progress=False)["pretrain_ir"]
    ws = Workspace(cfg.workspace)
    rows = read_manifest(ws)
    n_train = sum(r.split == "train" for r in rows)
    assert 0 < n_train < len(rows) == 30 and result["videos_ok"] == n_train
    info = ws.read_record("pretrain_ir", "all").videos["model"]
    assert set(info["knn"]) == {"label", "background", "actor_shape", "actor_colour", "camera"}
    assert set(info["knn_init"]) == set(info["knn"])
    n_test = len(rows) - n_train
    for acc in [*info["knn"].values(), *info["knn_init"].values()]:
        assert 0.0 <= acc <= 1.0 and abs(acc * n_test - round(acc * n_test)) < 1e-3  # a fraction of the test videos
    assert result["knn_label"] == info["knn"]["label"]
    # each label set's accuracy is the float64 reference's: the test split's videos voting among the train split's,
    # on the stage's own (L2-normalised) embeddings
    import csv

    emb, ids = read_embeddings(ws, "pretrain_ir")
    x = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    test = np.array([{r.video_id: r.split for r in rows}[v] == "test" for v in ids])
    with open(tmp_path / "data" / "labels.csv", newline="") as f:
        table = {row["video_id"]: row for row in csv.DictReader(f)}
    for column, acc in info["knn"].items():
        names = sorted({table[v][column] for v in ids if table[v][column]})
        y = np.array([names.index(table[v][column]) if table[v][column] else -1 for v in ids])
        want = knn_reference(x[~test], y[~test], x[test], y[test], k=3, tau=cfg.pretrain.tau)
        assert acc == pytest.approx(round(want, 4), abs=1e-4), column


_RUNNER = """
import sys
import torch
torch.set_num_threads(1)
from idtprior.config import load_config
from idtprior.flows.pipeline import pretrain_pipeline
pretrain_pipeline(load_config(sys.argv[1]), stages=["pretrain_ir"], progress=False)
"""


def test_a_killed_training_stage_resumes_from_its_last_epoch(tmp_path, one_thread):
    import yaml
    from prefect.settings import PREFECT_API_URL

    cfg = make_workspace(tmp_path, pretrain_ir={"epochs": 6})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    runs = Path(cfg.workspace) / "runs" / "pretrain_ir"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(cfg_path)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(runs.glob("*/checkpoints/last.ckpt")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ws = Workspace(cfg.workspace)
    assert ws.read_record("pretrain_ir", "all") is None, "the kill landed after the stage finished"
    assert list(runs.glob("*/checkpoints/last.ckpt"))

    result = pretrain_pipeline(cfg, stages=["pretrain_ir"], progress=False)["pretrain_ir"]
    run_dir = next(runs.iterdir())
    # one CSV log folder per start; the killed start may not have flushed its metrics.csv yet
    starts = sorted(run_dir.glob("csv/version_*"), key=lambda p: int(p.name.split("_")[1]))
    assert len(starts) == 2, "the rerun did not resume (one log per start)"
    import csv

    with open(starts[1] / "metrics.csv", newline="") as f:
        resumed_epochs = {int(r["epoch"]) for r in csv.DictReader(f) if r.get("loss_epoch")}
    assert resumed_epochs and min(resumed_epochs) >= 1 and max(resumed_epochs) == 5
    assert result["epochs"] == 6

    # the same stage run without interruption ends with the same weights
    ref = cfg.with_updates(workspace=str(tmp_path / "ref-ws"))
    pretrain_pipeline(ref, stages=["ingest", "decode", "pretrain_ir"], progress=False)
    got = load_encoder(ws.read_record("pretrain_ir", "all").videos["model"]["encoder"]).state_dict()
    want = load_encoder(Workspace(ref.workspace).read_record("pretrain_ir", "all").videos["model"]["encoder"]
                        ).state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)


def test_more_epochs_continue_the_shorter_run_and_fewer_epochs_retrain(tmp_path, one_thread):
    """2 epochs (lr halved at epoch 1), then 1: a shorter schedule trains afresh; then 2 again: the run continues
    from the 1-epoch run's checkpoint, trains epoch 1 only, and ends with the straight 2-epoch run's weights."""
    cfg = make_workspace(tmp_path, n=8, pretrain_ir={"epochs": 2, "lr_milestones": [1], "lr_gamma": 0.5})
    ws = Workspace(cfg.workspace)
    runs = Path(ws.root) / "runs" / "pretrain_ir"

    def trained():
        info = ws.read_record("pretrain_ir", "all").videos["model"]
        return info, load_encoder(info["encoder"]).state_dict(), list(runs.iterdir())

    pretrain_pipeline(cfg, stages=["pretrain_ir"], progress=False)
    straight, straight_weights, _ = trained()
    pretrain_pipeline(cfg.with_updates(pretrain_ir={"epochs": 1}), stages=["pretrain_ir"], progress=False)
    one, _, one_runs = trained()
    assert len(one_runs) == 1 and _csv_epochs(one_runs[0]) == {"version_0": [0]}  # afresh; the 2-epoch run removed
    assert one["epochs"] == 1 and one["loss_per_epoch"] == straight["loss_per_epoch"][:1]
    pretrain_pipeline(cfg, stages=["pretrain_ir"], progress=False)
    grown, grown_weights, grown_runs = trained()
    assert len(grown_runs) == 1 and grown_runs[0] != one_runs[0]  # a new run folder; the 1-epoch one removed after
    assert _csv_epochs(grown_runs[0]) == {"version_0": [0], "version_1": [1]}  # epoch 0 not trained again
    assert grown["epochs"] == 2 and grown["loss_per_epoch"] == straight["loss_per_epoch"]
    for k in straight_weights:
        torch.testing.assert_close(grown_weights[k], straight_weights[k], rtol=0, atol=1e-6, msg=k)


def test_a_longer_run_adopts_only_a_shorter_run_of_the_same_settings(tmp_path):
    import json

    from idtprior.stages.pretrain.task import RUN_META, adopt_shorter_run

    runs = tmp_path / "runs"
    for name, key, epochs in [("short", "k1", 1), ("shorter", "k1", 2), ("other", "k2", 2), ("longer", "k1", 9)]:
        (runs / name / "checkpoints").mkdir(parents=True)
        (runs / name / "checkpoints" / "last.ckpt").write_bytes(name.encode())
        (runs / name / "csv" / "version_0").mkdir(parents=True)
        (runs / name / "csv" / "version_0" / "metrics.csv").write_text(f"epoch,loss_epoch\n0,{epochs}\n")
        (runs / name / RUN_META).write_text(json.dumps({"resume_key": key, "epochs": epochs}))
    new = runs / "new"
    new.mkdir()
    assert adopt_shorter_run(runs, new, "k1", 2) == runs / "short"  # "shorter" is set to as many epochs, not fewer
    assert adopt_shorter_run(runs, runs / "none", "k1", 1) is None  # no run of k1 is set to fewer than 1 epoch
    assert adopt_shorter_run(runs, runs / "none", "k3", 5) is None  # no run of these settings at all
    fresh = runs / "fresh"
    fresh.mkdir()
    assert adopt_shorter_run(runs, fresh, "k1", 5) == runs / "shorter"  # the most epochs below 5, of the same key
    assert (fresh / "checkpoints" / "last.ckpt").read_bytes() == b"shorter"
    assert (fresh / "csv" / "version_0" / "metrics.csv").read_text().endswith("0,2\n")
    assert (runs / "shorter" / "checkpoints" / "last.ckpt").read_bytes() == b"shorter"  # the adopted run stays whole
    assert adopt_shorter_run(runs, fresh, "k1", 5) is None  # already started: its own checkpoint resumes
