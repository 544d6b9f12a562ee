import numpy as np
import pytest
import torch

from idtprior.evaluation.clips import eval_clips
from idtprior.evaluation.probe import (
    extract_feature_kinds,
    extract_features,
    few_shot_indices,
    few_shot_table,
    kmeans_agreement,
    knn_probe,
    linear_probe,
)
from idtprior.models import ArrayClipSource, moving_squares, resnet3d
from idtprior.models.data import MEAN_RGB


def _blobs(n_per_class: int, classes: int = 4, dim: int = 16, seed: int = 0, spread: float = 0.3):
    """Rows around ``classes`` orthogonal centres (linearly separable at this spread), labels ``i % classes``."""
    rng = np.random.default_rng(seed)
    y = np.arange(n_per_class * classes) % classes
    centres = 3.0 * np.eye(classes, dim)
    return (centres[y] + spread * rng.standard_normal((len(y), dim))).astype(np.float32), y


def test_linear_probe_recovers_a_planted_labelling_and_is_at_chance_on_shuffled_labels():
    train_x, train_y = _blobs(50, seed=0)
    test_x, test_y = _blobs(50, seed=1)
    got = linear_probe(train_x, train_y, test_x, test_y)
    assert got.accuracy == 1.0
    assert np.array_equal(got.predictions, test_y)
    np.testing.assert_allclose(got.probabilities.sum(1), 1.0, rtol=1e-5)
    # the same features with labels that carry no information: 4 classes, 400 test rows, chance 0.25 (sd 0.02)
    rng = np.random.default_rng(2)
    x, y = _blobs(100, seed=3)
    shuffled = linear_probe(x, rng.permutation(y), *(_blobs(100, seed=4)[0], rng.permutation(y)))
    assert abs(shuffled.accuracy - 0.25) < 0.08


def test_linear_probe_keeps_label_values_and_ignores_unlabelled_test_rows():
    train_x, train_y = _blobs(10, classes=3, seed=0)
    test_x, test_y = _blobs(4, classes=3, seed=1)
    got = linear_probe(train_x, train_y + 7, test_x, np.where(np.arange(len(test_y)) % 2, -1, test_y + 7))
    assert got.classes.tolist() == [7, 8, 9]
    assert got.accuracy == 1.0 and np.array_equal(got.predictions, test_y + 7)
    single = linear_probe(train_x[train_y == 1], train_y[train_y == 1], test_x, test_y)  # one class: predicts it
    assert single.predictions.tolist() == [1] * len(test_y)


def test_few_shot_first_takes_the_first_n_per_class_in_the_given_order():
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 2, -1, 1, 0, 2])
    assert few_shot_indices(labels, 1, "first").tolist() == [0, 1, 2]
    assert few_shot_indices(labels, 2, "first").tolist() == [0, 1, 2, 3, 4, 5]
    assert few_shot_indices(labels, 3, "first").tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9]
    # a class with fewer than n gives all it has; None takes every labelled row; -1 is never picked
    assert few_shot_indices(labels, 4, "first").tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11]
    assert few_shot_indices(labels, None, "random", seed=3).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11]


def test_few_shot_random_draws_differ_by_seed_and_are_reproducible():
    labels = np.arange(200) % 5
    draws = {s: few_shot_indices(labels, 5, "random", seed=s) for s in range(4)}
    for s, idx in draws.items():
        assert np.array_equal(idx, few_shot_indices(labels, 5, "random", seed=s))
        assert np.bincount(labels[idx], minlength=5).tolist() == [5] * 5
        assert len(set(idx.tolist())) == 25
    assert len({tuple(d.tolist()) for d in draws.values()}) == 4
    assert not np.array_equal(draws[0], few_shot_indices(labels, 5, "first"))
    with pytest.raises(ValueError, match="'middle'"):
        few_shot_indices(labels, 5, "middle")


def test_few_shot_table_averages_the_random_draws_over_seeds():
    train_x, train_y = _blobs(25, classes=3, seed=0, spread=2.0)  # overlapping: few shots score below all shots
    test_x, test_y = _blobs(40, classes=3, seed=1, spread=2.0)
    rows = few_shot_table(train_x, train_y, test_x, test_y, shots=(1, 5, None), seeds=(0, 1, 2))
    assert [(r["shots"], r["mode"]) for r in rows] == [(1, "first"), (1, "random"), (5, "first"), (5, "random"),
                                                        ("all", "first"), ("all", "random")]
    by = {(r["shots"], r["mode"]): r for r in rows}
    for key in ((1, "random"), (5, "random")):
        runs = by[key]["runs"]
        assert len(runs) == 3 and by[key]["mean"] == pytest.approx(np.mean(runs))
        assert by[key]["std"] == pytest.approx(np.std(runs))
    for key in ((1, "first"), (5, "first"), ("all", "first"), ("all", "random")):
        assert len(by[key]["runs"]) == 1 and by[key]["std"] == 0.0
    idx = few_shot_indices(train_y, 5, "random", seed=1)
    assert by[(5, "random")]["runs"][1] == linear_probe(train_x[idx], train_y[idx], test_x, test_y).accuracy
    assert by[("all", "first")]["mean"] == by[("all", "random")]["mean"] > by[(1, "random")]["mean"]


def test_knn_probe_and_kmeans_agreement_on_planted_blobs():
    train_x, train_y = _blobs(20, classes=3, seed=0)
    test_x, test_y = _blobs(10, classes=3, seed=1)
    assert knn_probe(train_x, train_y, test_x, test_y, k=5) == 1.0
    got = kmeans_agreement(test_x, test_y, k=3, runs=2, seed=0)
    assert got == {"nmi": pytest.approx(1.0), "purity": 1.0}
    scrambled = kmeans_agreement(test_x, np.random.default_rng(0).permutation(test_y), k=3, runs=2, seed=0)
    assert scrambled["nmi"] < 0.3


def _indexed_video(frames: int = 20, h: int = 32, w: int = 48) -> np.ndarray:
    """Channel 0 holds the frame index x 10, channel 1 the column index x 4: a clip's pixels tell where they came
    from."""
    v = np.zeros((frames, h, w, 3), np.uint8)
    v[..., 0] = (np.arange(frames) * 10)[:, None, None]
    v[..., 1] = (np.arange(w) * 4)[None, None, :]
    return v


def test_eval_clips_are_seeded_random_windows_with_a_centre_crop():
    src = ArrayClipSource([_indexed_video(), _indexed_video()])
    clips = eval_clips(src, 0, clip_length=8, crop_size=32, clips=5, seed=3)  # (5, 3, 8, 32, 32)
    assert clips.shape == (5, 3, 8, 32, 32)
    frames = np.rint((clips[:, 0, :, 0, 0].numpy() + MEAN_RGB[0]) * 255 / 10).astype(int)  # (5, 8) frame indices
    starts = frames[:, 0]
    assert np.array_equal(frames, starts[:, None] + np.arange(8)) and ((0 <= starts) & (starts <= 12)).all()
    assert len(set(starts.tolist())) > 1  # random windows, not five copies of one
    columns = np.rint((clips[0, 1, 0, 0, :].numpy() + MEAN_RGB[1]) * 255 / 4).astype(int)
    assert columns.tolist() == list(range(8, 40))  # the centre 32 of 48 columns, unresized
    assert torch.equal(clips, eval_clips(src, 0, 8, 32, 5, seed=3))
    assert not torch.equal(clips, eval_clips(src, 0, 8, 32, 5, seed=4))
    other = eval_clips(src, 1, 8, 32, 5, seed=3)  # clips are seeded per video too
    assert not torch.equal(clips, other)


def test_extract_features_is_the_mean_over_clips_and_independent_of_batching():
    torch.manual_seed(0)
    encoder = resnet3d(width=0.125, embed_dim=8).eval()
    videos, _ = moving_squares(5, frames=12, size=32, seed=0)
    src = ArrayClipSource(videos)
    feats = extract_features(encoder, src, [4, 1, 2], clip_length=8, crop_size=32, clips=3, seed=1, batch_size=9)
    assert feats.shape == (3, encoder.feature_dim) and feats.dtype == np.float32
    with torch.no_grad():
        ref = encoder.features(eval_clips(src, 1, 8, 32, 3, seed=1)).mean(0).numpy()
    np.testing.assert_allclose(feats[1], ref, rtol=1e-5, atol=1e-6)
    one_by_one = extract_features(encoder, src, [4, 1, 2], clip_length=8, crop_size=32, clips=3, seed=1, batch_size=1)
    np.testing.assert_allclose(feats, one_by_one, rtol=1e-5, atol=1e-6)
    emb = extract_features(encoder, src, None, 8, 32, clips=3, seed=1, kind="embedding")
    assert emb.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_one_pass_gives_each_kind_as_its_own_extraction_does():
    # the probe (backbone) and the kNN (embedding) of one network share one pass in the evaluate stage
    torch.manual_seed(0)
    encoder = resnet3d(width=0.125, embed_dim=8).eval()
    videos, _ = moving_squares(5, frames=12, size=32, seed=0)
    src = ArrayClipSource(videos)
    both = extract_feature_kinds(encoder, src, [4, 1, 2, 0], 8, 32, clips=3, seed=1, batch_size=6)
    for kind in ("backbone", "embedding"):
        alone = extract_features(encoder, src, [4, 1, 2, 0], 8, 32, clips=3, seed=1, batch_size=6, kind=kind)
        assert np.array_equal(both[kind], alone), kind
    with torch.no_grad():  # the embedding is the encoder's own forward, averaged over the clips and normalised
        ref = torch.nn.functional.normalize(encoder(eval_clips(src, 2, 8, 32, 3, seed=1)).mean(0), dim=0).numpy()
    np.testing.assert_allclose(both["embedding"][2], ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="feature kinds"):
        extract_feature_kinds(encoder, src, None, 8, 32, kinds=("pixels",))


@pytest.mark.parametrize("clip_length", [8, 16, 32])
def test_features_at_the_papers_clip_lengths(clip_length):
    # Table 3 of the paper evaluates 8, 16 and 32 frames; 12-frame videos loop for the longer clips
    torch.manual_seed(0)
    encoder = resnet3d(width=0.125, embed_dim=8)
    videos, _ = moving_squares(2, frames=12, size=32, seed=0)
    feats = extract_features(encoder, ArrayClipSource(videos), None, clip_length, 32, clips=2, seed=0)
    assert feats.shape == (2, encoder.feature_dim) and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])
