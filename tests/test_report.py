"""``idtprior report``: a workspace planted by hand (decoded frames, clusters, sketches, a training record with its
run folder, evaluate records in the stage's format), then the report's tables, figures and missing stages checked
against the planted numbers and direct computations; a second report writes the same bytes."""

import numpy as np
import pytest

from idtprior.cli import main
from idtprior.evaluation.figures import decode_png
from idtprior.storage import ChunkRecord, ManifestRow, Workspace, write_manifest
from idtprior.storage.frames import write_frames
from idtprior_testutils import moving_square_frames

IDS = [f"v{i}" for i in range(8)]
FRAMES = 12


def commit(ws: Workspace, stage: str, chunk: str, videos: dict, arrays: dict | None = None, attrs=None) -> None:
    if arrays is None:
        ws.commit(ChunkRecord(stage, chunk, "fp", "", videos))
        return
    version, group = ws.new_version(stage, chunk)
    for name, data in arrays.items():
        arr = group.create_array(name, data=data, overwrite=True)
        if attrs and name in attrs:
            arr.attrs.update(attrs[name])
    ws.commit(ChunkRecord(stage, chunk, "fp", version, videos))


def result(network: str, protocol: str, **extra) -> dict:
    return {"status": "ok", "network": network, "protocol": protocol, "clip_length": 16, "label_column": "label",
            "classes": ["a", "b"], "train_fingerprint": "x", "seconds": 1.0, **extra}


@pytest.fixture
def planted(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    write_manifest(ws, [ManifestRow(video_id=v, path=str(tmp_path / f"{v}.mp4"), label="ab"[i % 2],
                                    split="train", chunk="all", frame_count=FRAMES) for i, v in enumerate(IDS)])
    version, group = ws.new_version("decode", "all")
    for i, v in enumerate(IDS):
        write_frames(group, v, moving_square_frames(FRAMES, seed=i), time_chunk=8, fps=25.0)
    ws.commit(ChunkRecord("decode", "all", "fp", version, {v: {"status": "ok", "frames": FRAMES} for v in IDS}))
    commit(ws, "cluster", "all", {"clusters": {"status": "ok", "k": 2, "videos": 8}},
           {"labels": np.array([[0, 0, 1, 1, 0, 1, 0, 1]], np.int64)}, {"labels": {"video_ids": IDS}})
    rng = np.random.default_rng(0)
    commit(ws, "sketches", "all", {"sketches": {"status": "ok"}},
           {"sketches": rng.normal(size=(8, 16)).astype(np.float32), "valid": np.ones(8, bool)},
           {"sketches": {"video_ids": IDS}})
    run = tmp_path / "runs" / "pretrain_la"
    (run / "csv" / "version_0").mkdir(parents=True)
    np.save(run / "bank.npy", np.repeat(np.eye(2, 4, dtype=np.float32), 4, axis=0) + 0.01 * rng.normal(size=(8, 4))
            .astype(np.float32))
    (run / "csv" / "version_0" / "metrics.csv").write_text(
        "epoch,step,loss_epoch,lr,knn_acc\n0,1,3.0,0.1,0.25\n1,2,2.5,0.05,0.5\n")
    commit(ws, "pretrain_la", "all", {"model": {
        "status": "ok", "run_dir": str(run), "epochs": 2, "objective": "la", "cluster_source": "idt",
        "eval_videos": 8, "knn": {"label": 0.875, "colour": 0.375}, "knn_init": {"label": 0.5, "colour": 0.25}}},
        {"embeddings": np.zeros((8, 4), np.float32)}, {"embeddings": {"video_ids": IDS}})
    correct = {v: i % 2 == 0 for i, v in enumerate(IDS)}
    for chunk, res in {
        "pretrain_la.finetune.16": result("pretrain_la", "finetune", accuracy=0.6, correct=correct),
        "supervised.finetune.16": result("supervised", "finetune", accuracy=0.8, correct=correct),
        "pretrain_la.probe.16": result("pretrain_la", "probe", correct={}, table=[
            {"shots": 1, "mode": "random", "mean": 0.4, "std": 0.05, "runs": [0.35, 0.45]}]),
        "pretrain_la.knn.16": result("pretrain_la", "knn", knn={"label": 0.7}, nmi={"label": 0.25},
                                     purity={"label": 0.75}, correct={"label": correct}),
    }.items():
        commit(ws, "evaluate", chunk, {"result": res})
    return ws


def test_report_writes_the_planted_numbers_the_figures_and_the_missing_stages_and_repeats_byte_for_byte(
        planted, tmp_path, capsys):
    import torch

    from idtprior.stages.cluster import cluster_figure
    from idtprior.models.clustering import cluster_bank

    out = tmp_path / "report"
    assert main(["report", planted.url, "-o", str(out)]) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "| pretrain_la | 60.0 (75% of supervised) |" in md and "| supervised | 80.0 |" in md  # Table 1
    assert "| pretrain_la | label | 16 | random | 40.0 ± 5.0 |" in md  # Table 2
    assert "| pretrain_la | 16 | 70.0 / 0.250 / 0.750 |" in md  # the evaluate kNN table
    assert "| network | colour | label |" in md and "| after training | 0.375 | 0.875 |" in md  # the training record
    assert "| random init | 0.250 | 0.500 |" in md
    missing = md.split("## Missing")[1]
    for stage in ("pretrain_ir", "tune_joint", "pretrain_la_bank", "supervised"):
        assert f"- {stage}\n" in missing
    assert "bank of **pretrain_la**" in md
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert {"clusters_idt.png", "clusters_bank.png", "clusters_joint.png", "pretrain_la_loss.png",
            "pretrain_la_lr.png", "pretrain_la_knn.png"} <= set(files)
    for name in files:
        if name.endswith(".png"):
            assert f"]({name})" in md

    # LA's bank clusters: the montage of K-means (k of the cluster stage, seed 0) of the planted bank
    bank = np.load(tmp_path / "runs" / "pretrain_la" / "bank.npy")
    labels = cluster_bank(torch.from_numpy(bank), 2, 1, 0)[0].numpy()
    assert sorted(np.bincount(labels)) == [4, 4]  # the bank's two planted groups
    want = cluster_figure(planted, IDS, labels, None, 0, 6, 4, list("abababab"))
    np.testing.assert_array_equal(decode_png(files["clusters_bank.png"]), want)

    assert main(["report", planted.url, "-o", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == files


def test_report_of_an_empty_workspace_lists_every_stage_missing(tmp_path):
    from idtprior.report import write_report

    path = write_report(str(tmp_path / "empty"), str(tmp_path / "out"))
    md = path.read_text()
    missing = md.split("## Missing")[1]
    for what in ("evaluate", "pretrain_ir", "pretrain_la", "tune_joint", "cluster", "bank clusters",
                 "joint clusters"):
        assert f"- {what}" in missing
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.md"]
