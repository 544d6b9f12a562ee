import hashlib

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from idtprior.datasets.lists import read_source
from idtprior.datasets.synthetic import MOTIONS, make_demo_data, plan_videos, read_demo_labels, render_video
from idtprior.video.io import probe_video


def test_rendering_is_deterministic_and_the_files_are_real_h264(tmp_path):
    a = make_demo_data(tmp_path / "a", videos_per_class=5, frames=12, seed=3)
    b = make_demo_data(tmp_path / "b", videos_per_class=5, frames=12, seed=3)
    assert a == b
    def digest(root):
        return {v.video_id: hashlib.sha256((root / "videos" / v.relpath).read_bytes()).hexdigest()
                               for v in a}
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    info = probe_video(tmp_path / "a" / "videos" / a[0].relpath)
    assert (info.codec, info.width, info.height, info.frame_count) == ("h264", 160, 120, 12)
    entries = read_source(tmp_path / "a" / "splits" / "trainlist01.txt", video_root=tmp_path / "a" / "videos")
    labels = read_demo_labels(tmp_path / "a")
    assert {e.video_id for e in entries} == set(labels) and len(entries) == 30
    assert all(e.label == labels[e.video_id]["label"] and e.split == labels[e.video_id]["split"] for e in entries)
    assert {e.split for e in entries} == {"train", "test"}


def test_classes_differ_by_motion_not_appearance():
    """Appearance facts are drawn independently of the class: each class sees most backgrounds and shapes."""
    plan = [v for v, _ in plan_videos(40, 0.3, 0.3, seed=0)]
    for motion in MOTIONS:
        vids = [v for v in plan if v.label == motion]
        assert len({v.background for v in vids}) >= 5 and len({v.actor_shape for v in vids}) >= 5
    cams = {v.camera for v in plan}
    assert cams == {"static", "pan", "shake"}


def test_appearance_alone_is_near_chance_on_motion_labels():
    """Colour histograms + k-means (an appearance-only grouping) give NMI < 0.1 with the motion labels."""
    plan = plan_videos(25, 0.3, 0.3, seed=1)
    feats, labels = [], []
    for video, vseed in plan:
        frames = np.stack(render_video(video.label, video.background, video.actor_shape, video.actor_colour,
                                       video.camera, 16, 80, 60, vseed))
        hist = [np.histogram(frames[..., c], bins=8, range=(0, 256))[0] for c in range(3)]
        feats.append(np.concatenate(hist) / frames[..., 0].size)
        labels.append(video.label)
    pred = KMeans(len(MOTIONS), n_init=10, random_state=0).fit_predict(np.array(feats))
    assert normalized_mutual_info_score(labels, pred) < 0.1


def test_motion_is_in_the_pixels(tmp_path):
    """A moving class changes frames over time; a static scene would not (guards against a renderer bug)."""
    plan = plan_videos(1, 0.3, 0.0, seed=0)
    for video, vseed in plan:
        frames = np.stack(render_video(video.label, video.background, video.actor_shape, video.actor_colour,
                                       "static", 8, 80, 60, vseed)).astype(int)
        assert np.abs(np.diff(frames, axis=0)).sum(axis=(1, 2, 3)).min() > 0, video.label


def test_demo_refuses_data_rendered_with_other_settings(tmp_path, capsys):
    from idtprior.cli import main
    from idtprior.datasets.synthetic import SETTINGS_FILE, demo_data_mismatch

    data = tmp_path / "data"
    make_demo_data(data, videos_per_class=2, frames=12, seed=3)
    settings = {"videos_per_class": 2, "frames": 12, "width": 160, "height": 120, "fps": 25,
                "camera_motion_fraction": 0.3, "test_fraction": 0.3, "seed": 3}
    assert demo_data_mismatch(data, settings) == []
    assert demo_data_mismatch(data, {**settings, "seed": 4}) == [f"seed: 3 in {data}, 4 in the config"]
    # the bundled demo config asks for 40 videos per class and seed 0: nothing runs, the difference is named
    rc = main(["demo", "--data", str(data), "--workspace", str(tmp_path / "ws"), "--stages", "ingest"])
    err = capsys.readouterr().err
    assert rc == 2 and f"videos_per_class: 2 in {data}, 40 in the config" in err and "seed: 3" in err
    assert not (tmp_path / "ws").exists()
    (data / SETTINGS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=SETTINGS_FILE):
        demo_data_mismatch(data, settings)


def test_heldout_appearance_keeps_the_test_splits_backgrounds_shapes_and_colours_out_of_training():
    from idtprior.datasets.synthetic import HELDOUT_BACKGROUNDS, HELDOUT_COLOURS, HELDOUT_SHAPES, plan_videos

    plan = [v for v, _ in plan_videos(36, 0.3, 0.3, seed=1, heldout_appearance=True)]  # the 216 videos
    train = [v for v in plan if v.split == "train"]
    test = [v for v in plan if v.split == "test"]
    assert len(plan) == 216 and len(test) > 0 and len(train) > len(test)
    for attr, held in (("background", HELDOUT_BACKGROUNDS), ("actor_shape", HELDOUT_SHAPES),
                       ("actor_colour", HELDOUT_COLOURS)):
        assert {getattr(v, attr) for v in test} == set(held)  # every held-out value occurs, only in the test split
        assert not {getattr(v, attr) for v in train} & set(held)
    # the classes stay balanced in both splits, and the default draw is the original benchmark's, unchanged
    assert {sum(v.label == m for v in test) for m in {v.label for v in plan}} == {len(test) // 6}
    default = plan_videos(40, 0.3, 0.3, seed=0)
    assert [(v.background, v.actor_shape, v.actor_colour, s) for v, s in default[:3]] == [
        ("dots", "cross", 1, 195299266), ("dots", "disc", 0, 25736643), ("gradient", "triangle", 1, 1654603060)]
    assert {v.background for v, _ in default if v.split == "test"} & {v.background for v, _ in default
                                                                        if v.split == "train"}
