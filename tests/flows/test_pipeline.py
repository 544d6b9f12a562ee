"""The pipeline on the real Prefect engine: ingest of bad files, caching, incremental runs, Dask, resume after kill."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from idtprior.config import PipelineConfig
from idtprior.config.base import ConfigError
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.stages.ingest import ingest_flow
from idtprior.storage import FrameStore, Workspace, read_manifest
from idtprior.video.io import write_video
from idtprior_testutils import moving_square_frames, write_audio_only

pytestmark = pytest.mark.usefixtures("prefect_engine")


def make_videos(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"clip{i:03d}.mp4"
        write_video(path, moving_square_frames(24, seed=i), fps=25, options={"preset": "ultrafast"})
        paths.append(path)
    return paths


def config(tmp_path: Path, source: Path, workers: int = 0, **updates) -> PipelineConfig:
    cfg = PipelineConfig.model_validate({"workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode"],
                                         "ingest": {"source": str(source),
                                         "num_chunks": 4}, "dask": {"n_workers": workers}, "decode": {"short_side": 32}})
    return cfg.with_updates(**updates) if updates else cfg


def created(ws: Workspace, stage: str) -> dict[str, float]:
    return {c: r.created for c, r in ws.records(stage).items()}


def test_ingest_keeps_good_videos_and_explains_each_bad_one(tmp_path):
    src = tmp_path / "videos"
    good = make_videos(src / "good", 3)
    shutil.copy(good[0], src / "zz_copy_of_clip000.mp4")
    (src / "empty.mp4").write_bytes(b"")
    (src / "notes.avi").write_text("not a video at all\n" * 20)
    data = good[1].read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 4])
    write_audio_only(src / "sound.mp4")

    counts = ingest_flow(config(tmp_path, src), progress=False)
    rows = {r.video_id: r for r in read_manifest(Workspace(tmp_path / "ws"))}
    for i in range(3):
        row = rows[f"good__clip{i:03d}"]
        assert row.ok and (row.frame_count, row.width, row.height, row.codec) == (24, 64, 48, "h264")
    assert rows["zz_copy_of_clip000"].status == "duplicate" and rows["zz_copy_of_clip000"].duplicate_of == "good__clip000"
    for vid, words in {"empty": "empty", "notes": "notes.avi", "truncated": "truncated.mp4",
                       "sound": "no video stream"}.items():
        assert rows[vid].status == "failed" and words in rows[vid].error, rows[vid].error
    assert counts == {"stage": "ingest", "chunks": len({r.chunk for r in rows.values()}), "videos_ok": 4,
                      "videos_failed": 4, "duplicates": 1}


def test_reruns_recompute_nothing_and_changes_redo_only_what_they_touch(tmp_path):
    src = tmp_path / "videos"
    make_videos(src, 10)
    cfg = config(tmp_path, src)
    ws = Workspace(cfg.workspace)
    pretrain_pipeline(cfg, progress=False)
    first = {s: created(ws, s) for s in ("ingest", "decode")}
    assert len(FrameStore(ws).video_ids) == 10

    pretrain_pipeline(cfg, progress=False)  # same config, same data: nothing recomputed
    assert {s: created(ws, s) for s in ("ingest", "decode")} == first

    smaller = cfg.with_updates(decode={"short_side": 24})  # decode setting: decode reruns, ingest does not
    pretrain_pipeline(smaller, progress=False)
    assert created(ws, "ingest") == first["ingest"]
    changed = created(ws, "decode")
    assert all(changed[c] != t for c, t in first["decode"].items())
    assert FrameStore(ws).read_clip("clip000", 0, 1).shape == (1, 24, 32, 3)

    before = {s: created(ws, s) for s in ("ingest", "decode")}
    new = make_videos(src, 1, start=10)[0]  # one more video: only its chunk is processed
    pretrain_pipeline(smaller, progress=False)
    chunk = next(r.chunk for r in read_manifest(ws) if r.video_id == new.stem)
    for stage in ("ingest", "decode"):
        after = created(ws, stage)
        redone = {c for c in after if after[c] != before[stage].get(c)}
        assert redone == {chunk}, (stage, redone, chunk)
    assert len(FrameStore(ws).video_ids) == 11


@pytest.mark.slow  # 8 s; the default run keeps test_dask_processes (the same comparison on scheduler and worker
# processes) and the pipeline's own LocalCluster in test_terminal
def test_flow_on_a_dask_local_cluster_with_two_workers(tmp_path):
    src = tmp_path / "videos"
    make_videos(src, 6)
    cfg = config(tmp_path, src, workers=2)
    result = pretrain_pipeline(cfg, progress=False)
    assert result["decode"]["videos_ok"] == 6
    assert all(counts["seconds"] > 0 for counts in result.values())  # each stage's wall time, for the demo's summary
    store = FrameStore(Workspace(cfg.workspace))
    ref = config(tmp_path / "ref", src, workers=0)
    pretrain_pipeline(ref, progress=False)
    ref_store = FrameStore(Workspace(ref.workspace))
    for vid in ref_store.video_ids:
        np.testing.assert_array_equal(store.read_clip(vid, 0, 24), ref_store.read_clip(vid, 0, 24))


_RUNNER = """
import sys
from idtprior.config import load_config
from idtprior.flows.pipeline import pretrain_pipeline
pretrain_pipeline(load_config(sys.argv[1]), progress=False)
"""


def test_a_run_killed_mid_stage_resumes_and_matches_an_uninterrupted_run(tmp_path):
    import yaml
    from prefect.settings import PREFECT_API_URL

    src = tmp_path / "videos"
    make_videos(src, 16)
    cfg = config(tmp_path, src).with_updates(chunk_concurrency=1, ingest={"num_chunks": 8})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    ws = Workspace(cfg.workspace)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(cfg_path)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(ws.records("decode")) < 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = created(ws, "decode")
    assert 1 <= len(done_before) < 8, f"kill landed outside the decode stage: {len(done_before)} chunks done"
    for chunk, rec in ws.records("decode").items():  # every committed chunk is whole
        group = ws.chunk_group("decode", chunk, rec.version)
        assert sorted(group.array_keys()) == sorted(rec.videos)

    pretrain_pipeline(cfg, progress=False)
    after = created(ws, "decode")
    assert all(after[c] == t for c, t in done_before.items()), "finished chunks were redone"
    assert len(after) == len({r.chunk for r in read_manifest(ws)})

    ref = cfg.with_updates(workspace=str(tmp_path / "ref-ws"))
    pretrain_pipeline(ref, progress=False)
    got, want = FrameStore(ws), FrameStore(Workspace(ref.workspace))
    assert got.video_ids == want.video_ids and len(got.video_ids) == 16
    for vid in want.video_ids:
        np.testing.assert_array_equal(got.read_clip(vid, 0, 24), want.read_clip(vid, 0, 24))
    strip = [(r.video_id, r.fingerprint, r.status, r.chunk) for r in read_manifest(ws)]
    assert strip == [(r.video_id, r.fingerprint, r.status, r.chunk) for r in read_manifest(Workspace(ref.workspace))]
    for chunk in after:  # orphan versions of the killed attempt are gone
        assert len([p for p in Path(ws.root, "decode.zarr", chunk).iterdir() if p.is_dir()]) == 1


def test_cli_run_and_status(tmp_path, capsys):
    from idtprior.cli import main

    src = tmp_path / "videos"
    make_videos(src, 3)
    (src / "broken.mp4").write_text("nope")
    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(config(tmp_path, src).model_dump(mode="json")))
    assert main(["run", str(cfg_path), "--stages", "ingest"]) == 0
    assert main(["status", str(tmp_path / "ws")]) == 0
    out = capsys.readouterr().out
    assert "4 videos in the manifest (1 failed, 3 ok)" in out and "broken" in out
    assert main(["run", str(cfg_path), "--stages", "nosuch"]) == 2
    assert "unknown stage(s) ['nosuch']" in capsys.readouterr().err


def test_idt_codebook_encode_cluster_stages_group_videos_by_motion(tmp_path):
    """The whole IDT prior on a tiny synthetic benchmark: every stage runs, reruns are cached, clusters follow motion."""
    from idtprior.config import load_config
    from idtprior.datasets.synthetic import make_demo_data
    from idtprior.stages.cluster import read_cluster_labels
    from idtprior.stages.fit_codebook import read_codebook
    from idtprior.stages.encode import read_sketches

    make_demo_data(tmp_path / "data", videos_per_class=3, frames=32)
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").with_updates(
        workspace=str(tmp_path / "ws"), ingest={"source": str(tmp_path / "data" / "splits" / "trainlist01.txt"),
                                                "video_root": str(tmp_path / "data" / "videos")},
        idt={"sample_videos": 6, "sample_rows": 200}, codebook={"gmm_components": 8, "sketch_dim": 256},
        cluster={"k": 6}, dask={"n_workers": 0})
    result = pretrain_pipeline(cfg, stages=["ingest", "decode", "idt", "fit_codebook", "encode", "cluster"],
                               progress=False)
    ws = Workspace(cfg.workspace)
    assert result["idt"]["videos_ok"] == 6 and 0 < result["idt"]["sample_rows"] <= 6 * 200
    book = read_codebook(ws)
    assert book.n_components == 8 and book.sketch_dim == 256
    ids = [r.video_id for r in read_manifest(ws)]
    sketches, valid = read_sketches(ws, ids)
    assert sketches.shape == (18, 256) and valid.all()
    from idtprior.stages.encode import read_assembled_sketches

    whole, whole_valid, whole_ids = read_assembled_sketches(ws)  # one (N, S) array aligned with the manifest
    assert whole_ids == ids and whole_valid.all()
    np.testing.assert_array_equal(whole, sketches)
    # the count sketch of a unit Fisher vector x keeps its squared norm in expectation, with variance
    # (2/S)(1 - sum x_i^4) <= 2/S (the hash collisions' cross terms): each video within 5 standard deviations, and the
    # mean of the 18 within 5 of the mean's
    squared = np.linalg.norm(sketches.astype(np.float64), axis=1) ** 2
    sd = np.sqrt(2 / sketches.shape[1])
    assert np.abs(squared - 1).max() <= 5 * sd, squared
    assert abs(squared.mean() - 1) <= 5 * sd / np.sqrt(len(squared)), squared.mean()
    labels, label_ids = read_cluster_labels(ws)
    assert labels.shape == (3, 18) and label_ids == ids
    # 6 motion classes x 3 videos: random labelings give NMI 0.44 on average, 0.595 at their 99th percentile
    assert result["cluster"]["nmi"] > 0.6
    # LA's close neighbours (a shared cluster in any run) share a motion more often than two videos at random
    assert result["cluster"]["close_precision"] > 2 * result["cluster"]["same_label_pairs"]
    before = {s: created(ws, s) for s in ("idt", "fit_codebook", "encode", "sketches", "cluster")}
    pretrain_pipeline(cfg, stages=["idt", "fit_codebook", "encode", "cluster"], progress=False)
    assert {s: created(ws, s) for s in before} == before

    # the training stages on top: IR warm-up, LA with these IDT clusters, LA in the joint [bank | sketch] space
    tiny = cfg.with_updates(pretrain={"width": 0.125, "embed_dim": 16, "clip_length": 4, "frame_step": 2,
                                      "crop_size": 32, "batch_size": 6, "negatives": 8, "num_workers": 0,
                                      "accelerator": "cpu"},
                            pretrain_ir={"epochs": 1}, pretrain_la={"epochs": 1}, tune_joint={"epochs": 1,
                                                                                              "n_clusters": 3})
    # read-time checks (storage.upstream): clusters committed between a training stage's plan and its task fail the
    # task before it reads them (nothing trained or committed); the rerun plans from the clusters there then
    from idtprior.stages.cluster import plan_cluster
    from idtprior.stages.pretrain.flow import plan_train_stage
    from idtprior.storage.upstream import UpstreamChanged
    from idtprior.stages.cluster import cluster_task
    from idtprior.stages.pretrain.task import train_stage

    plan = plan_train_stage("pretrain_la", tiny.with_updates(pretrain_la={"init_from": None}), progress=False)
    plan.pop("legacy", None)
    other = cfg.with_updates(cluster={"k": 2})  # a cluster run from the UI with another k, in between
    cplan = plan_cluster(other, ws)["all"]
    cluster_task.fn(ws.url, "cluster", "all", cplan["fingerprint"], cplan["video_ids"], other.cluster,
                    upstream=cplan["upstream"])
    assert read_cluster_labels(ws)[0].max() == 1
    with pytest.raises(UpstreamChanged, match=r"pretrain_la: upstream changed since planning: cluster all is keyed"):
        train_stage(ws.url, "pretrain_la", "all", **plan)
    assert ws.read_record("pretrain_la", "all") is None and not Path(ws.path("runs", "pretrain_la")).exists()
    trained = pretrain_pipeline(tiny, stages=["cluster", "pretrain_ir", "pretrain_la", "tune_joint"], progress=False)
    # cluster recomputed under the config's key (k=6 again), and LA trained from the clusters there then
    assert read_cluster_labels(ws)[0].max() == 5
    assert ws.read_record("pretrain_la", "all").fingerprint == plan_train_stage("pretrain_la", tiny)["fingerprint"]
    assert [trained[s]["epochs"] for s in ("pretrain_ir", "pretrain_la", "tune_joint")] == [1, 1, 1]
    from idtprior.stages.pretrain.task import idt_labels_for

    np.testing.assert_array_equal(idt_labels_for(ws, ids), labels)  # LA trained on the cluster stage's labels
    with pytest.raises(ConfigError, match=r"1 training videos have no cluster label \(e.g. nosuch\)"):
        idt_labels_for(ws, [*ids, "nosuch"])
    joint = ws.read_record("tune_joint", "all").videos["model"]
    assert joint["cluster_source"] == "joint" and "knn_init" not in joint  # started from pretrain_la, not afresh


def test_inspect_writes_pictures_of_decode_and_idt(tmp_path):
    from idtprior.cli import main

    src = tmp_path / "videos"
    make_videos(src, 1)
    cfg = config(tmp_path, src)
    pretrain_pipeline(cfg, stages=["ingest", "decode"], progress=False)
    assert main(["inspect", cfg.workspace, "decode", "clip000", "-o", str(tmp_path / "out")]) == 0
    assert main(["inspect", cfg.workspace, "idt", "clip000", "-o", str(tmp_path / "out")]) == 0
    import cv2

    strip = cv2.imread(str(tmp_path / "out" / "clip000.decode.png"))
    assert strip.shape == (2 * 32, 8 * 43, 3)  # 16 frames of 32x43 (48x64 at short side 32) in 8 columns
    idt = cv2.imread(str(tmp_path / "out" / "clip000.idt.png"))
    assert idt is not None and (tmp_path / "out" / "clip000.idt.gif").stat().st_size > 0
    assert main(["inspect", cfg.workspace, "nosuchstage", "clip000"]) == 2


def test_cli_run_with_another_source_and_video_root(tmp_path):
    """--source replaces the config's source; relative list paths resolve against --video-root, else the list's folder."""
    import yaml

    from idtprior.cli import main

    make_videos(tmp_path / "store" / "videos", 2)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "all.txt").write_text("clip000.mp4\nclip001.mp4\n")
    cfg_path = tmp_path / "cfg.yaml"
    cfg = config(tmp_path, tmp_path / "elsewhere", ingest={"video_root": str(tmp_path / "elsewhere")})
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    args = ["run", str(cfg_path), "--stages", "ingest", "--source", str(lists / "all.txt")]
    assert main(args + ["--workspace", str(tmp_path / "ws-a")]) == 0  # resolved in lists/: both missing
    assert {r.status for r in read_manifest(Workspace(str(tmp_path / "ws-a")))} == {"failed"}
    assert main(args + ["--workspace", str(tmp_path / "ws-b"), "--video-root", str(tmp_path / "store" / "videos")]) == 0
    rows = read_manifest(Workspace(str(tmp_path / "ws-b")))
    assert sorted(r.video_id for r in rows) == ["clip000", "clip001"] and {r.status for r in rows} == {"ok"}


def test_cluster_agreement_equals_sklearn_nmi_and_contingency_purity():
    from sklearn.metrics import normalized_mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    from idtprior.stages.cluster import cluster_agreement

    rng = np.random.default_rng(0)
    ids = [f"v{i}" for i in range(200)]
    truth = {v: f"class{rng.integers(0, 4)}" for v in ids[:180]}  # 20 videos without a label
    labels = rng.integers(0, 7, size=(2, 200))
    labels[:, 5] = -1  # not encoded: left out
    nmis, purities = [], []
    for run in labels:
        keep = [i for i in range(180) if run[i] >= 0]
        y, p = [truth[ids[i]] for i in keep], run[keep]
        nmis.append(normalized_mutual_info_score(y, p))
        purities.append(contingency_matrix(p, y).max(axis=1).sum() / len(keep))
    got = cluster_agreement(labels, ids, truth)
    assert {k: got[k] for k in ("nmi", "purity")} == {"nmi": round(float(np.mean(nmis)), 4),
                                                      "purity": round(float(np.mean(purities)), 4)}
    assert 0.0 < got["purity"] < 1.0
    assert set(got) == {"nmi", "purity", "close_pairs", "close_precision", "same_label_pairs"}


@pytest.mark.parametrize("m", [1, 2, 3])
def test_close_neighbour_agreement_equals_pairwise_count(m):
    from idtprior.stages.cluster import close_neighbour_agreement

    rng = np.random.default_rng(m)
    n = 90
    truth = [f"c{t}" for t in rng.integers(0, 3, n)]
    labels = rng.integers(0, 5, size=(m, n))
    labels[0, :4] = -1  # no sketch in the first run: close only through the other runs
    close = np.zeros((n, n), bool)
    for run in labels:
        close |= (run[:, None] == run[None]) & (run[:, None] >= 0)
    same = np.array(truth)[:, None] == np.array(truth)[None]
    upper = np.triu(np.ones((n, n), bool), 1)
    got = close_neighbour_agreement(labels, truth)
    assert got == {"close_pairs": round(float(close[upper].mean()), 4),
                   "close_precision": round(float(same[close & upper].mean()), 4),
                   "same_label_pairs": round(float(same[upper].mean()), 4)}
    if m > 1:  # the union over runs has more close pairs than any one run
        assert got["close_pairs"] > close_neighbour_agreement(labels[1:2], truth)["close_pairs"]
