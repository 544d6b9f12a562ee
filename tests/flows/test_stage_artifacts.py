"""Per-stage pictures in the Prefect artifacts (each stage's ``*_markdown``, ``idtprior.stages.pictures``): a tiny pipeline (ingest .. cluster, boxes
imported from bb-files) on the real Prefect engine, then each stage's newest artifact read back from the server; its
data-URI PNG must decode to the image the drawing core makes from the same stored inputs, computed here directly."""

import re

import cv2
import numpy as np
import pytest

from idtprior.config import PipelineConfig
from idtprior.evaluation.figures import (cluster_montage, data_uri_bytes, decode_png, draw_tracks, encode_png,
                                         line_plot, markdown_image, montage, training_curves)
from idtprior.runtime.artifacts import artifact_key
from idtprior.stages.cluster import cluster_figure
from idtprior.stages.idt import drawing_params
from idtprior.stages.pictures import (IMAGE_BYTES, MIN_CELL_SIDE, PNG_LEVEL, VideoFrames, cell_for, draw_boxes,
                                      histogram_plot, pick_videos, size_histogram)
from idtprior.stages.pretrain.flow import training_markdown
from idtprior.storage import ChunkRecord, FrameStore, Workspace, read_manifest
from idtprior.video.idt.textformat import write_boxes
from idtprior_testutils import write_moving_square_videos

# the pipeline of the module fixture takes ~20 s (seven stage flows on six videos): its tests are slow; the training
# test needs no engine and runs by default
slow = pytest.mark.slow

N_VIDEOS, FRAMES = 6, 32  # the middle frame (16) has a whole IDT window (15 + 1 frames) before it


def newest_markdown(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (newest, *_) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                             sort=ArtifactSort.CREATED_DESC)
    return newest.data


def images(markdown: str) -> dict[str, np.ndarray]:
    """alt -> decoded RGB image of every data-URI PNG in the markdown."""
    found = re.findall(r"!\[([^\]]*)\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", markdown)
    assert found, markdown[:500]
    return {alt: decode_png(data_uri_bytes(uri)) for alt, uri in found}


def published(image: np.ndarray) -> np.ndarray:
    """What the artifact shows of ``image``: its PNG through ``markdown_image``'s size cap (downsized when over)."""
    md = markdown_image("x", encode_png(image, PNG_LEVEL), IMAGE_BYTES, PNG_LEVEL)
    return decode_png(data_uri_bytes(md[len("![x]("):-1]))


def boxes_of(i: int) -> list[np.ndarray]:
    """The planted boxes of video i: one per frame around the moving square (every other frame empty)."""
    return [np.array([[2 + i, 8, 40, 30, 0.5 + 0.05 * i]], np.float32) if t % 2 == 0 else np.zeros((0, 5), np.float32)
            for t in range(FRAMES)]


@pytest.fixture(scope="module")
def pipeline_ws(tmp_path_factory, prefect_engine) -> tuple[Workspace, PipelineConfig]:
    from idtprior.flows.pipeline import pretrain_pipeline

    tmp = tmp_path_factory.mktemp("stage-artifacts")
    write_moving_square_videos(tmp / "videos", N_VIDEOS, frames=FRAMES)
    (tmp / "bb").mkdir()
    for i in range(N_VIDEOS):
        write_boxes(tmp / "bb" / f"clip{i:03d}.bb", boxes_of(i))
    labels = tmp / "labels.csv"
    labels.write_text("video_id,label\n" + "".join(f"clip{i:03d},{'ab'[i % 2]}\n" for i in range(N_VIDEOS)))
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp / "ws"), "ingest": {"source": str(tmp / "videos"), "num_chunks": 2,
                                                 "labels_file": str(labels)},
        "dask": {"n_workers": 0}, "decode": {"short_side": 48}, "detect": {"bb_folder": str(tmp / "bb")},
        "idt": {"sample_videos": N_VIDEOS, "sample_rows": 1000},
        "codebook": {"gmm_components": 4, "sketch_dim": 32, "gmm_iters": 6}, "cluster": {"k": 2, "runs": 1}})
    pretrain_pipeline(cfg, stages=["ingest", "decode", "detect", "idt", "fit_codebook", "encode", "cluster"],
                      progress=False)
    return Workspace(cfg.workspace), cfg


@slow
def test_decode_pictures_are_the_stored_frames_spread_over_each_picked_video(pipeline_ws):
    ws, cfg = pipeline_ws
    (image,) = images(newest_markdown(artifact_key(ws, "decode", "pictures"))).values()
    store = FrameStore(ws)
    picked = pick_videos(store.video_ids, 3, cfg.idt.seed, "decode")
    assert len(picked) == 3
    rows = [[store.read_clip(v, t, 1)[0] for t in np.linspace(0, FRAMES - 1, 6).round().astype(int)] for v in picked]
    assert rows[0][0].shape == (48, 64, 3)
    np.testing.assert_array_equal(image, published(montage(rows, cell=(48, 64), row_labels=picked, label_width=120)))


@slow
def test_detect_pictures_draw_the_stored_boxes(pipeline_ws):
    from idtprior.video.io import iter_frames

    ws, cfg = pipeline_ws
    md = newest_markdown(artifact_key(ws, "detect", "pictures"))
    (image,) = images(md).values()
    picked = pick_videos([r.video_id for r in read_manifest(ws) if r.ok], 3, cfg.idt.seed, "detect")
    paths = {r.video_id: r.path for r in read_manifest(ws)}
    rows = []
    for v in picked:
        planted = boxes_of(int(v[-3:]))
        frames = list(iter_frames(paths[v]))
        rows.append([draw_boxes(frames[t], planted[t], t) for t in np.linspace(0, FRAMES - 1, 4).round()
                     .astype(int)])
        assert f"| {v} | {FRAMES} | {FRAMES // 2} | {FRAMES // 2} |" in md
    np.testing.assert_array_equal(image, published(montage(rows, cell=(48, 64), row_labels=picked, label_width=120)))
    assert (image == (0, 255, 0)).all(-1).sum() > 50  # the boxes are there


@slow
def test_idt_pictures_count_rows_per_scale_and_draw_a_window_of_tracks(pipeline_ws):
    from idtprior.stages.idt import read_sample
    from idtprior.video.idt import extract_idt

    ws, cfg = pipeline_ws
    md = newest_markdown(artifact_key(ws, "idt", "pictures"))
    rows = read_sample(ws)
    scales, counts = np.unique(rows[:, 6], return_counts=True)
    assert len(scales) >= 2
    for s, c in zip(scales, counts):
        assert f"| {float(np.round(s, 4)):g} | {c} |" in md
    (image,) = images(md).values()
    params = drawing_params(cfg.idt)
    picked = pick_videos([r.video_id for r in read_manifest(ws) if r.ok], 3, cfg.idt.seed, "idt")
    drawn, labels = [], []
    for v in picked:  # the window ending at the middle frame, from the stored frames
        clip = FrameStore(ws).read_clip(v, FRAMES // 2 - params.track_length, params.track_length + 1)
        got, points = extract_idt(iter(clip), params, return_points=True)
        drawn.append(draw_tracks(clip[-1], points[got[:, 0] == params.track_length]))
        labels.append(f"{v}: {int((got[:, 0] == params.track_length).sum())} tracks")
    assert any("0 tracks" not in label for label in labels)
    np.testing.assert_array_equal(image, published(montage([[d] for d in drawn], cell=(96, 128), row_labels=labels,
                                                           label_width=160)))


@slow
def test_fit_codebook_summary_shows_the_fit_report_of_the_record(pipeline_ws):
    ws, _ = pipeline_ws
    md = newest_markdown(artifact_key(ws, "fit_codebook", "summary"))
    (fit,) = ws.read_record("fit_codebook", "all").videos["codebook"]["fit"]
    assert 0 < fit["pca_variance_kept"] <= 1 and 1 <= len(fit["log_likelihood"]) <= 6
    assert f"| {fit['pca_dim']} | {fit['pca_variance_kept']:.4f} | {len(fit['log_likelihood'])} |" in md
    (image,) = images(md).values()
    ll = fit["log_likelihood"]
    np.testing.assert_array_equal(image, line_plot({"block 0": ll}, "EM log-likelihood", x=list(range(1, len(ll) + 1))))


@slow
def test_encode_pictures_count_valid_sketches_and_their_norms(pipeline_ws):
    from idtprior.stages.encode import read_assembled_sketches

    ws, _ = pipeline_ws
    md = newest_markdown(artifact_key(ws, "encode", "pictures"))
    x, valid, ids = read_assembled_sketches(ws)
    norms = np.linalg.norm(x[valid].astype(np.float64), axis=1)
    assert f"| {N_VIDEOS} | {int(valid.sum())} | {int((~valid).sum())} | 32 | {norms.min():.4f} |" in md
    (image,) = images(md).values()
    np.testing.assert_array_equal(image, histogram_plot(norms, "sketch L2 norm"))


@slow
def test_cluster_summary_montage_is_the_stored_middle_frames_with_their_window_tracks(pipeline_ws):
    from idtprior.stages.cluster import read_cluster_labels
    from idtprior.video.idt import extract_idt

    ws, cfg = pipeline_ws
    md = newest_markdown(artifact_key(ws, "cluster", "summary"))
    assert re.search(r"\| nmi \| purity \|", md)
    pics = images(md)
    labels, ids = read_cluster_labels(ws)
    np.testing.assert_array_equal(pics["cluster sizes"], size_histogram(labels[0]))
    store = FrameStore(ws)
    source = VideoFrames(ws, ids)
    params = drawing_params(cfg.idt)
    tracks = {}
    for i, v in enumerate(ids):  # reference: IDT over the 16 stored frames ending at the middle frame
        clip = store.read_clip(v, FRAMES // 2 - params.track_length, params.track_length + 1)
        got, points = extract_idt(iter(clip), params, return_points=True)
        tracks[i] = points[got[:, 0] == params.track_length]
    truth = {r.video_id: r.label for r in read_manifest(ws)}
    # the 48 x 64 stored frames at 96 x 128 a tile (issue 36: labels and tracks legible), the labels in full
    assert cell_for(48, 64, least=MIN_CELL_SIDE) == (96, 128)
    want = cluster_montage(source, labels[0], 6, 4, cfg.cluster.seed, (96, 128), tracks=tracks,
                           labels=[truth[v] for v in ids])
    np.testing.assert_array_equal(pics["cluster montage"], published(want))

    # without tracks, every cell is the stored middle frame, resized to the tile (the layout of figures.montage)
    plain = cluster_figure(ws, ids, labels[0], None, cfg.cluster.seed)
    from idtprior.evaluation.figures import largest_clusters

    rows = largest_clusters(labels[0], 6, 4, cfg.cluster.seed)
    left = plain.shape[1] - (max(len(m) for _, m in rows) * (128 + 2) + 2)
    assert left >= 96
    for r, (_, members) in enumerate(rows):
        for c, i in enumerate(members):
            y, x = 2 + r * (96 + 2), left + 2 + c * (128 + 2)
            frame = store.read_clip(ids[i], FRAMES // 2, 1)[0]
            np.testing.assert_array_equal(plain[y:y + 96, x:x + 128],
                                          cv2.resize(frame, (128, 96), interpolation=cv2.INTER_AREA))


def test_training_markdown_draws_the_runs_curves_and_the_records_knn_table(tmp_path):
    ws = Workspace(tmp_path / "ws")
    run = tmp_path / "run"
    (run / "csv" / "version_0").mkdir(parents=True)
    lines = ["epoch,step,loss_epoch,lr,knn_acc"] + [f"{e},{e * 3},{2.0 - 0.3 * e},{0.1 / (e + 1)},{0.2 + 0.1 * e}"
                                                    for e in range(4)]
    (run / "csv" / "version_0" / "metrics.csv").write_text("\n".join(lines) + "\n")
    version, _ = ws.new_version("pretrain_la", "all")
    ws.commit(ChunkRecord("pretrain_la", "all", "fp", version, {"model": {
        "status": "ok", "run_dir": str(run), "knn": {"label": 0.625, "colour": 0.25},
        "knn_init": {"label": 0.5, "colour": 0.125}}}))
    md = training_markdown(ws, "pretrain_la")
    assert "| network | colour | label |" in md
    assert "| after training | 0.250 | 0.625 |" in md and "| random init | 0.125 | 0.500 |" in md
    from idtprior.stages.pretrain.task import epoch_rows

    rows = epoch_rows(run)
    assert [r["loss"] for r in rows] == pytest.approx([2.0, 1.7, 1.4, 1.1])
    want = {name: decode_png(png) for name, png in training_curves(rows).items()}
    got = images(md)
    assert set(want) == {"loss", "lr", "knn"}
    for name, image in want.items():
        np.testing.assert_array_equal(got[f"pretrain_la {name}"], image)
    assert training_markdown(ws, "tune_joint") == "_No record of tune_joint._\n"
