import numpy as np
import pytest
import torch

from idtprior.models import ArrayClipSource, ClipDataModule, ClipDataset, EpochSampler, FunctionClipSource
from idtprior.models import train
from idtprior.models.data import MEAN_RGB, DeviceAugment, collate_clips, collate_raw, transform_clip


def test_clip_shape_and_determinism_per_seed_epoch_index(squares):
    source, _ = squares
    ds = ClipDataset(source, clip_length=4, crop_size=32, seed=1)
    i, a = ds[(3, 0)]
    assert i == 3 and a.shape == (3, 4, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, ds[(3, 0)][1])  # same key, same clip
    assert not torch.equal(a, ds[(3, 1)][1])  # a new epoch draws new augmentations
    assert not torch.equal(a, ClipDataset(source, clip_length=4, crop_size=32, seed=2)[(3, 0)][1])


def test_short_videos_loop_and_eval_clip_is_the_resized_centre():
    frames = np.stack([np.full((8, 12, 3), 10 * t, np.uint8) for t in range(3)])  # frame t has value 10t
    ds = ClipDataset(ArrayClipSource([frames]), clip_length=7, crop_size=8, train=False)
    _, clip = ds[0]
    per_frame = (clip[0, :, 0, 0] + MEAN_RGB[0]) * 255
    np.testing.assert_allclose(per_frame.numpy(), [0, 10, 20, 0, 10, 20, 0], atol=1e-4)


@pytest.mark.parametrize("train", [False, True])
def test_frame_step_takes_every_kth_frame_and_loops_short_videos(train):
    def frame_values(n, step, length=4, epoch=0):
        frames = np.stack([np.full((8, 8, 3), t, np.uint8) for t in range(n)])  # frame t has value t
        ds = ClipDataset(ArrayClipSource([frames]), clip_length=length, crop_size=8, train=train, seed=3,
                         scales=(1.0,), grayscale_p=0, jitter=0, frame_step=step)
        clip = ds[(0, epoch)][1]
        return np.rint((clip[0, :, 0, 0] + MEAN_RGB[0]).numpy() * 255).astype(int)

    for epoch in range(5):
        got = frame_values(20, 3, epoch=epoch)  # a span of 10 frames inside 20
        assert np.all(np.diff(got) == 3) and 0 <= got[0] <= 10
    if not train:
        assert frame_values(20, 3).tolist() == [5, 8, 11, 14]  # the centre span
        assert frame_values(7, 3).tolist() == [0, 3, 6, 2]  # shorter than the span: looped over the video
        assert frame_values(20, 1).tolist() == [8, 9, 10, 11]  # step 1: consecutive frames, as before
    with pytest.raises(ValueError, match="frame_step 0"):
        ClipDataset(ArrayClipSource([np.zeros((2, 8, 8, 3), np.uint8)]), frame_step=0)


def test_eval_transform_is_exact_mean_subtraction_at_full_size():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 6, 6, 3), dtype=np.uint8)
    clip = transform_clip(frames, crop_size=6, rng=None)
    want = frames.transpose(3, 0, 1, 2) / 255.0 - np.asarray(MEAN_RGB)[:, None, None, None]
    np.testing.assert_allclose(clip.numpy(), want, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_training_crop_side_is_the_scale_of_the_short_side(scale):
    # every pixel holds its column index, so the span of values in a crop is its width minus one
    cols = np.broadcast_to(np.arange(60, dtype=np.uint8)[None, None, :, None], (2, 40, 60, 3)).copy()
    for seed in range(10):
        clip = transform_clip(cols, 40, np.random.default_rng(seed), scales=(scale,), grayscale_p=0, jitter=0)
        values = (clip[0, 0] + MEAN_RGB[0]) * 255
        assert clip.shape == (3, 2, 40, 40)
        assert float(values.max() - values.min()) == pytest.approx(40 * scale - 1, abs=1.0)


def test_sampler_shards_cover_every_video_each_epoch():
    shards = [list(EpochSampler(10, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert {i for s in shards for i, e in s} == set(range(10)) and {e for s in shards for _, e in s} == {0}
    s = EpochSampler(10, seed=0)
    first = [i for i, _ in s]
    s.set_epoch(1)
    second = list(s)
    assert sorted(first) == list(range(10)) and [i for i, _ in second] != first and second[0][1] == 1


def test_bad_read_clip_is_reported_with_the_video():
    src = FunctionClipSource(lambda i, s, n: np.zeros((n, 8, 8), np.uint8), lambda i: 5, 2)
    with pytest.raises(ValueError, match=r"video 1: read_clip\(start=.*\) returned shape \(4, 8, 8\)"):
        ClipDataset(src, clip_length=4, crop_size=8)[(1, 0)]


def test_datamodule_batches(squares):
    source, _ = squares
    dm = ClipDataModule(source, clip_length=4, crop_size=32, batch_size=5, num_workers=0, seed=0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3  # 16 videos, batch 5, last partial batch dropped
    idx, clips = batches[0]
    assert idx.shape == (5,) and clips.shape == (5, 3, 4, 32, 32)
    eval_idx = torch.cat([b[0] for b in dm.eval_dataloader()])
    assert eval_idx.tolist() == list(range(16))


def test_worker_processes_give_the_same_clips(squares):
    source, _ = squares
    loaders = [ClipDataModule(source, clip_length=4, crop_size=32, batch_size=4, num_workers=w).train_dataloader()
               for w in (0, 2)]
    a, b = (next(iter(dl)) for dl in loaders)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_augmentation_settings_reach_the_training_clips():
    """Scale 1, no colour change, no flip: a training clip is exactly a crop of the frames (a shift, never a mirror);
    with flip on, some epochs mirror it."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(6, 16, 24, 3), dtype=np.uint8)
    mean = np.asarray(MEAN_RGB)[:, None, None, None]
    views = {(kind, start, x): (frames[start : start + 4, :, x : x + 16, :][:, :, :: -1 if kind == "mirror" else 1]
                                .transpose(3, 0, 1, 2) / 255.0 - mean)
             for kind in ("crop", "mirror") for start in range(3) for x in range(9)}
    seen = {}
    for flip in (False, True):
        ds = ClipDataset(ArrayClipSource([frames]), clip_length=4, crop_size=16, seed=0, scales=(1.0,),
                         grayscale_p=0.0, jitter=0.0, flip=flip)
        seen[flip] = set()
        for epoch in range(12):
            clip = ds[(0, epoch)][1].numpy()
            kinds = {key[0] for key, want in views.items() if np.allclose(clip, want, atol=1e-6)}
            assert kinds, f"epoch {epoch}: the clip is no crop of the frames"
            seen[flip] |= kinds
    assert seen[False] == {"crop"} and seen[True] == {"crop", "mirror"}
    with pytest.raises(ValueError, match="grayscale_p 1.5"):
        ClipDataset(ArrayClipSource([frames]), grayscale_p=1.5)


@pytest.mark.parametrize("augment", [{}, dict(jitter=0.0), dict(grayscale_p=1.0, jitter=0.8), dict(flip=False)],
                         ids=["paper", "no-jitter", "gray-strong-jitter", "no-flip"])
def test_device_augment_equals_the_loaders_transform(augment):
    # videos of several sizes, so a batch's crops differ in size (grouped for the resize); the same (seed, epoch,
    # index) draws must give the same clips to float32 rounding, from uint8 crops (here larger than the clips, upsampled
    # to 24: still fewer bytes than the float32 clips)
    rng = np.random.default_rng(0)
    source = ArrayClipSource([rng.integers(0, 256, (20, 40 + 3 * i, 53, 3), dtype=np.uint8) for i in range(9)])
    loader = ClipDataset(source, clip_length=8, crop_size=24, seed=3, **augment)
    raw = ClipDataset(source, clip_length=8, crop_size=24, seed=3, raw=True, **augment)
    keys = [(i, 2) for i in range(9)] + [(4, 5)]
    indices, clips = collate_clips([loader[k] for k in keys])
    raw_indices, flat, draws = collate_raw([raw[k] for k in keys])
    assert flat.dtype == torch.uint8 and flat.numel() < clips.numel() * clips.element_size()  # fewer bytes than float
    assert len(set(draws[:, 0].tolist())) > 1  # crops of several sizes in the batch
    out = DeviceAugment(8, 24)(flat, draws)
    assert torch.equal(indices, raw_indices)
    torch.testing.assert_close(out, clips, rtol=0, atol=1e-5)
    if augment.get("grayscale_p") == 1.0:  # grayscale is kept through the jitter's saturation step
        torch.testing.assert_close(out[:, 0] + MEAN_RGB[0], out[:, 1] + MEAN_RGB[1], rtol=0, atol=1e-5)


def test_device_augment_runs_after_the_transfer_in_training(squares, tiny_params, tmp_path):
    # the DataModule's on_after_batch_transfer hook: training with augment_on="device" is training with the loader's
    # clips (bank and weights equal), with raw uint8 batches leaving the loader
    source, labels = squares
    runs = {}
    for place in ("loader", "device"):
        runs[place] = train(tiny_params(epochs=1, augment_on=place), source, out_dir=tmp_path / place,
                            labels_for_eval=labels, export_embeddings=False)
    np.testing.assert_allclose(np.load(runs["loader"].bank), np.load(runs["device"].bank), rtol=0, atol=1e-5)
    dm = ClipDataModule(source, 4, 32, batch_size=4, augment_on="device")
    indices, flat, draws = next(iter(dm.train_dataloader()))
    assert flat.dtype == torch.uint8 and draws.shape == (4, 10)
    assert dm.on_after_batch_transfer((indices, flat, draws), 0)[1].shape == (4, 3, 4, 32, 32)
    with pytest.raises(ValueError, match="augment_on 'gpu' is not one of"):
        ClipDataModule(source, augment_on="gpu")
