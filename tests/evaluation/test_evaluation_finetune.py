import numpy as np
import pytest
import torch

from idtprior.evaluation.finetune import FROZEN_PARTS, FinetuneParams, Plateau, finetune, split_validation
from idtprior.models import ArrayClipSource, moving_squares, resnet3d


def _tiny(**overrides) -> FinetuneParams:
    base = dict(batch_size=8, clip_length=8, crop_size=32, crop_scales=(1.0,), test_clips=2, val_fraction=0.125,
                lr=0.03, plateau_patience=0, epochs=8, seed=0, device="cpu")
    base.update(overrides)
    return FinetuneParams(**base)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class RecordingSource(ArrayClipSource):
    """An in-memory clip source that remembers which videos were read."""

    def __init__(self, videos):
        super().__init__(videos)
        self.reads: list[int] = []

    def read_clip(self, index, start, length):
        self.reads.append(int(index))
        return super().read_clip(index, start, length)


@pytest.fixture(scope="module")
def motion_run():
    """A tiny ResNet3d finetuned on 64 moving-square videos (4 directions), tested on 32 others (~1.5 s); torch on
    one thread for the module's tests, as it was again after them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    videos, labels = moving_squares(96, frames=10, size=32, seed=1)
    train, test = ArrayClipSource(videos[:64]), RecordingSource(videos[64:])
    torch.manual_seed(0)
    encoder = resnet3d(width=0.125, embed_dim=8)
    before = _state(encoder)
    reported = []
    result = finetune(encoder, train, labels[:64], test, labels[64:], _tiny(frozen_blocks=1), on_epoch=reported.append)
    yield {"result": result, "encoder": encoder, "before": before, "labels": labels, "test": test,
           "reported": reported}
    torch.set_num_threads(threads)


def test_finetuning_learns_a_planted_motion_task(motion_run):
    r = motion_run["result"]
    # 4 directions, chance 0.25; measured 0.875 (0.62-0.88 over data and model seeds)
    assert r.test_accuracy >= 0.5
    losses = [h["loss"] for h in r.history]
    assert np.mean(losses[-2:]) < losses[0] - 0.2
    assert r.test_probabilities.shape == (32, 4)
    np.testing.assert_allclose(r.test_probabilities.sum(1), 1.0, rtol=1e-5)
    assert np.array_equal(r.test_predictions, r.test_probabilities.argmax(1))
    assert r.test_accuracy == float((r.test_predictions == motion_run["labels"][64:]).mean())
    assert motion_run["reported"] == r.history and [h["epoch"] for h in r.history] == list(range(len(r.history)))


def test_frozen_blocks_keep_their_weights_and_the_rest_moves(motion_run):
    r, before = motion_run["result"], motion_run["before"]
    after = r.model.encoder.state_dict()
    frozen = [k for k in before if k.split(".")[0] in FROZEN_PARTS[1]]
    trained = [k for k in before if k.split(".")[0] not in FROZEN_PARTS[1] and k.endswith("weight")]
    assert frozen and trained
    for k in frozen:  # weights and BatchNorm running statistics
        assert torch.equal(after[k], before[k]), k
    for k in trained:
        if not k.startswith("fc."):  # the embedding head is not on the classification path
            assert not torch.equal(after[k], before[k]), k
    # the caller's encoder is left as it was
    assert all(torch.equal(v, before[k]) for k, v in motion_run["encoder"].state_dict().items())


def test_validation_is_split_off_the_training_videos_and_the_test_is_read_after(motion_run):
    r, labels, test = motion_run["result"], motion_run["labels"], motion_run["test"]
    assert set(r.val_ids) | set(r.train_ids) == set(range(64)) and not set(r.val_ids) & set(r.train_ids)
    assert np.bincount(labels[r.val_ids], minlength=4).tolist() == [2, 2, 2, 2]  # 12.5% of each class's 16
    # the test source was read only to score it: test_clips reads of every test video, nothing else
    assert sorted(test.reads) == sorted(list(range(32)) * 2)


def test_lr_follows_the_plateau_rule_in_the_run(motion_run):
    history = motion_run["result"].history
    replay = Plateau(0.03, 0.1, patience=0)
    lrs = [0.03]
    for h in history[:-1]:
        lrs.append(replay.step(h["val_loss"]))
    assert [h["lr"] for h in history] == pytest.approx(lrs)


def test_lr_drops_tenfold_after_a_plateau_and_training_stops_after_the_last_drop():
    # a fully frozen encoder and a vanishing lr: the validation loss cannot improve by the 1e-4 threshold
    videos, labels = moving_squares(16, frames=10, size=32, seed=2)
    src = ArrayClipSource(videos)
    torch.manual_seed(0)
    params = _tiny(frozen_blocks=4, lr=1e-9, plateau_patience=1, lr_drops=1, epochs=20, val_fraction=0.25)
    r = finetune(resnet3d(width=0.125, embed_dim=8), src, labels, src, None, params)
    # epoch 0 sets the best, epochs 1-2 do not beat it: drop; epochs 3-4 again: second drop, beyond lr_drops=1
    assert [h["lr"] for h in r.history] == pytest.approx([1e-9, 1e-9, 1e-9, 1e-10, 1e-10], rel=1e-9)
    assert r.test_accuracy is None and r.test_probabilities.shape == (16, 4)


def test_plateau_matches_torch_reduce_lr_on_plateau():
    values = [1.0, 0.9, 0.9, 0.95, 0.89, 0.89995, 0.9, 0.7, 0.7, 0.7, 0.7, 0.71, 0.6, 0.6, 0.6, 0.6]
    for patience in (0, 1, 2):
        ours = Plateau(0.1, 0.1, patience, 1e-4)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "min", factor=0.1, patience=patience, threshold=1e-4,
                                                         eps=0.0)  # torch skips drops under eps
        for v in values:
            ref.step(v)
            assert ours.step(v) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), (patience, v)


def test_split_validation_is_stratified_seeded_and_never_empties_a_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3] + [-1] * 3)
    train, val = split_validation(labels, 0.2, seed=0)
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 1, 1, 0]
    assert set(train) | set(val) == set(range(18)) and not set(train) & set(val)
    assert np.array_equal(val, split_validation(labels, 0.2, seed=0)[1])
    assert any(not np.array_equal(val, split_validation(labels, 0.2, seed=s)[1]) for s in range(1, 5))
    assert split_validation(labels, 0.0)[1].size == 0


@pytest.mark.parametrize("frozen_blocks", [0, 2])
def test_frozen_blocks_setting(frozen_blocks):
    videos, labels = moving_squares(12, frames=10, size=32, seed=0)
    src = ArrayClipSource(videos)
    torch.manual_seed(0)
    encoder = resnet3d(width=0.125, embed_dim=8)
    r = finetune(encoder, src, labels, src, labels, _tiny(frozen_blocks=frozen_blocks, epochs=1, val_fraction=0.0))
    before, after = encoder.state_dict(), r.model.encoder.state_dict()
    for part in ("conv1", "layer1", "layer2", "layer3"):
        same = torch.equal(before[f"{part}.weight" if part == "conv1" else f"{part}.0.conv1.weight"],
                           after[f"{part}.weight" if part == "conv1" else f"{part}.0.conv1.weight"])
        assert same == (part in FROZEN_PARTS[frozen_blocks]), part


def test_bad_inputs_name_the_value():
    videos, labels = moving_squares(8, frames=10, size=32, seed=0)
    src = ArrayClipSource(videos)
    with pytest.raises(ValueError, match="frozen_blocks 5"):
        FinetuneParams(frozen_blocks=5)
    with pytest.raises(ValueError, match=r"\(7,\)"):
        finetune(resnet3d(width=0.125), src, labels[:7], src, None, _tiny())
    with pytest.raises(ValueError, match="label 3 does not fit n_classes 2"):
        finetune(resnet3d(width=0.125), src, labels, src, None, _tiny(), n_classes=2)
    with pytest.raises(ValueError, match=r"validation ids \[8\]"):
        finetune(resnet3d(width=0.125), src, labels, src, None, _tiny(), val_ids=[1, 8])
