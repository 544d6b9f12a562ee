"""Training survives a non-finite loss and a corrupt checkpoint: real Lightning fits of a tiny ResNet on tiny clips.

A NaN or infinite loss is injected with the explicit test hook ``IDTPRIOR_FAULT_LOSS="<epoch>:<batch>[:<value>[:<rank>]]"``
(read by the LightningModule); checkpoints are corrupted by truncating or rewriting their files.
"""

import re

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from idtprior.models.checkpoints import (CorruptCheckpointWarning, checkpoint_problem, epochs_in_checkpoint,
                                         load_encoder, whole_init_checkpoint)
from idtprior.models.lightning import NonFiniteLossError, PretrainModule
from idtprior.models.training import train
from idtprior.testing import FAULT_LOSS_ENV, fault_loss_from_env


class _EpochEndStates(pl.Callback):
    """The module's state dict at the end of every epoch (before the epoch's checkpoint is written: Lightning runs
    ModelCheckpoint after the other callbacks), keyed by epochs done."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.states[trainer.current_epoch + 1] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class _Kill(pl.Callback):
    """A killed job: dies at the start of the given (0-based) epoch, after the previous epoch's checkpoints."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")


def _state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _assert_same_state(got: dict, want: dict, atol: float = 0.0) -> None:
    assert got.keys() == want.keys()
    for key in want:  # log_z is nan for LA
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=atol, equal_nan=True, msg=key)


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _csv_epochs(out_dir) -> dict[str, list[int]]:
    """{version folder: epochs whose epoch-mean loss it logged}, one folder per start of the run."""
    import csv

    out = {}
    for path in sorted(out_dir.glob("csv/version_*/metrics.csv")):
        with open(path, newline="") as f:
            out[path.parent.name] = sorted({int(r["epoch"]) for r in csv.DictReader(f) if r.get("loss_epoch")})
    return out


@pytest.mark.parametrize(("spec", "overrides", "message", "epochs_kept"), [
    ("2:3", dict(objective="ir"), "loss nan at epoch 2 of 3, batch 3 of 4, global step 7", 1),
    ("1:2:-inf", dict(objective="la", cluster_source="bank"), "loss -inf at epoch 1 of 3, batch 2 of 4, global step 2",
     0),
], ids=["ir-nan-epoch2", "la-inf-epoch1"])
def test_a_non_finite_loss_stops_the_run_naming_where_and_keeps_the_last_good_checkpoint(
        spec, overrides, message, epochs_kept, squares, tiny_params, tmp_path, monkeypatch):
    source, _ = squares
    out = tmp_path / "run"
    states = _EpochEndStates()
    monkeypatch.setenv(FAULT_LOSS_ENV, spec)  # the hook the training task reads and passes on
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny_params(epochs=3, **overrides), source, out_dir=out, callbacks=[states],
              fault_loss=fault_loss_from_env())
    assert re.fullmatch(rf"run {re.escape(str(out))}: non-finite {re.escape(message)} \(counted from 1\): training "
                        rf"stopped before this step's update; the checkpoints hold the last good epoch "
                        rf"\({epochs_kept} done\)", str(info.value)), str(info.value)
    assert sorted(states.states) == list(range(1, epochs_kept + 1))  # no epoch ended after the fault
    checkpoints = out / "checkpoints"
    if epochs_kept == 0:
        assert not checkpoints.exists() or not list(checkpoints.iterdir())
        assert not (out / "encoder.pt").exists()
        return
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch0000.ckpt", "last.ckpt"]
    assert epochs_in_checkpoint(checkpoints / "last.ckpt") == epochs_kept
    # bit for bit the weights, bank and buffers the last good epoch ended with: nothing of the poisoned step got in
    _assert_same_state(_state(checkpoints / "last.ckpt"), states.states[epochs_kept])
    _assert_same_state(_state(checkpoints / "epoch0000.ckpt"), states.states[epochs_kept])
    assert all(torch.isfinite(v).all() for k, v in _state(checkpoints / "last.ckpt").items() if v.is_floating_point())


def test_the_loss_fault_hook_is_off_by_default_and_checked(monkeypatch):
    monkeypatch.delenv(FAULT_LOSS_ENV, raising=False)
    assert fault_loss_from_env() is None
    monkeypatch.setenv(FAULT_LOSS_ENV, "2:3:inf:1")
    assert fault_loss_from_env() == (2, 3, float("inf"), 1)
    for bad in ("2", "0:1", "1:0", "1:1:5", "a:b", "1:1:nan:0:9"):
        monkeypatch.setenv(FAULT_LOSS_ENV, bad)
        with pytest.raises(ValueError, match=rf"{FAULT_LOSS_ENV}='{re.escape(bad)}': expected"):
            fault_loss_from_env()


def test_a_corrupt_last_checkpoint_resumes_from_the_newest_whole_epoch_and_ends_as_a_straight_run(
        squares, tiny_params, tmp_path):
    """Three epochs killed after two; then last.ckpt is truncated and the newer epoch checkpoint lacks keys: the run
    resumes from the older epoch's checkpoint, trains epochs 2 and 3 and ends with the weights of an uninterrupted
    run. Then, the run done, a truncated last.ckpt is put back whole from the newest epoch's checkpoint."""
    source, _ = squares
    params = tiny_params(epochs=3)
    whole = train(params, source, out_dir=tmp_path / "whole", export_embeddings=False)
    assert sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir()) == [
        "epoch0001.ckpt", "epoch0002.ckpt", "last.ckpt"]  # the last two epochs besides last.ckpt
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="killed"):
        train(params, source, out_dir=cut, callbacks=[_Kill(2)])
    ckpts = cut / "checkpoints"
    assert epochs_in_checkpoint(ckpts / "last.ckpt") == epochs_in_checkpoint(ckpts / "epoch0001.ckpt") == 2
    _truncate(ckpts / "last.ckpt")
    torch.save({"state_dict": {}}, ckpts / "epoch0001.ckpt")
    assert checkpoint_problem(ckpts / "last.ckpt").startswith("unreadable (RuntimeError: PytorchStreamReader")
    assert checkpoint_problem(ckpts / "epoch0001.ckpt") == (
        "missing keys ['optimizer_states', 'lr_schedulers', 'loops', 'epoch', 'global_step']")

    with pytest.warns(CorruptCheckpointWarning) as caught:
        resumed = train(params, source, out_dir=cut, export_embeddings=False)
    text = " ".join(str(w.message) for w in caught if w.category is CorruptCheckpointWarning)
    assert f"checkpoint {ckpts / 'last.ckpt'} is unreadable" in text
    assert f"checkpoint {ckpts / 'epoch0001.ckpt'} is missing keys" in text
    assert "resuming from epoch0000.ckpt (1 epochs done)" in text
    assert _csv_epochs(cut) == {"version_0": [0, 1], "version_1": [1, 2]}  # epoch 2 trained again, then 3
    assert resumed.epochs_completed == whole.epochs_completed == 3
    _assert_same_state(_state(ckpts / "last.ckpt"), _state(whole.checkpoint), atol=1e-6)
    np.testing.assert_allclose(np.load(resumed.bank), np.load(whole.bank), atol=1e-6)
    # the last two epochs kept (epoch0001.ckpt written whole again); Lightning never deletes the one it resumed from
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch0000.ckpt", "epoch0001.ckpt", "epoch0002.ckpt",
                                                       "last.ckpt"]
    assert epochs_in_checkpoint(ckpts / "epoch0001.ckpt") == 2

    _truncate(ckpts / "last.ckpt", keep=0.9)
    with pytest.warns(CorruptCheckpointWarning, match=r"resuming from epoch0002.ckpt \(3 epochs done\)"):
        again = train(params, source, out_dir=cut, export_embeddings=False)
    assert again.epochs_completed == 3 and checkpoint_problem(ckpts / "last.ckpt") is None
    assert {k: v for k, v in _csv_epochs(cut).items() if v} == {"version_0": [0, 1], "version_1": [1, 2]}  # no epoch
    _assert_same_state(_state(ckpts / "last.ckpt"), _state(whole.checkpoint), atol=1e-6)
    _assert_same_state({k: v for k, v in load_encoder(again.encoder).state_dict().items()},
                       load_encoder(whole.encoder).state_dict(), atol=1e-6)


def test_with_no_whole_checkpoint_the_run_starts_over_with_a_warning(squares, tiny_params, tmp_path):
    source, _ = squares
    params = tiny_params(epochs=1)
    first = train(params, source, out_dir=tmp_path / "run", export_embeddings=False)
    want = _state(first.checkpoint)
    ckpts = tmp_path / "run" / "checkpoints"
    _truncate(ckpts / "last.ckpt", keep=0.0)  # an empty file
    (ckpts / "epoch0000.ckpt").write_bytes(b"not a checkpoint")
    with pytest.warns(CorruptCheckpointWarning, match=r"no checkpoint to resume from, training starts over"):
        again = train(params, source, out_dir=tmp_path / "run", export_embeddings=False)
    assert again.epochs_completed == 1 and checkpoint_problem(ckpts / "last.ckpt") is None
    assert _csv_epochs(tmp_path / "run") == {"version_0": [0], "version_1": [0]}
    _assert_same_state(_state(ckpts / "last.ckpt"), want, atol=1e-6)  # seeded: the same epoch again


def test_a_corrupt_checkpoint_or_encoder_is_never_taken_as_finished_or_as_a_start(squares, tiny_params, tmp_path):
    from idtprior.storage import ChunkRecord
    from idtprior.stages.pretrain.task import finished_training

    source, labels = squares
    run = train(tiny_params(epochs=1), source, out_dir=tmp_path / "run", export_embeddings=False)
    info = {"train_fingerprint": "fp", "epochs": 1, "run_dir": str(tmp_path / "run"),
            "checkpoint": str(run.checkpoint), "encoder": str(run.encoder)}
    record = ChunkRecord("pretrain_ir", "all", "key", "v1", {"model": info})
    assert finished_training(record, "fp") == info
    whole_ckpt, whole_enc = run.checkpoint.read_bytes(), run.encoder.read_bytes()
    _truncate(run.checkpoint)
    assert finished_training(record, "fp") is None
    la = PretrainModule(tiny_params(objective="la", cluster_source="idt"), 16, cluster_labels=labels)
    with pytest.raises(ValueError, match=rf"init_from {re.escape(str(run.checkpoint))}: unreadable checkpoint "
                                         rf"\(RuntimeError: PytorchStreamReader"):
        la.load_init(run.checkpoint)
    # the next stage starting from this finished run takes the same weights from its newest epoch checkpoint
    with pytest.warns(CorruptCheckpointWarning, match=r"init_from .*last.ckpt is unreadable .*starting from "
                                                      r"epoch0000.ckpt beside it.*\(1 epochs done\)"):
        start = whole_init_checkpoint(run.checkpoint)
    assert start == run.checkpoint.parent / "epoch0000.ckpt"
    la.load_init(start)
    np.testing.assert_array_equal(la.bank.bank.numpy(), np.load(run.bank))
    (run.checkpoint.parent / "epoch0000.ckpt").write_bytes(b"")  # no whole one left: the load names the fault
    assert whole_init_checkpoint(run.checkpoint) == run.checkpoint
    run.checkpoint.write_bytes(whole_ckpt)
    _truncate(run.encoder)
    assert finished_training(record, "fp") is None
    with pytest.raises(ValueError, match=rf"encoder {re.escape(str(run.encoder))}: unreadable"):
        load_encoder(run.encoder)
    run.encoder.write_bytes(whole_enc)
    assert finished_training(record, "fp") == info


@pytest.fixture
def file_system_sharing():
    # ddp_spawn hands the module's CPU tensors to its processes through shared memory; here the default
    # file-descriptor strategy fails in the child ("unable to resize file ... Invalid argument")
    import torch.multiprocessing as mp

    old = mp.get_sharing_strategy()
    mp.set_sharing_strategy("file_system")
    yield
    mp.set_sharing_strategy(old)


@pytest.mark.slow  # two 2-process fits: about 20 s on 2 CPU cores
@pytest.mark.timeout(300)  # a rank stopping alone would leave the other waiting in the all-reduce: fail, not hang
def test_under_ddp_a_nan_on_one_rank_stops_every_rank_at_the_same_step(squares, tiny_params, tmp_path, monkeypatch,
                                                                        file_system_sharing):
    """Two CPU processes (gloo, ddp_spawn); the loss of rank 1 only turns NaN in epoch 2. Both ranks stop at that
    step (every rank gathers every rank's loss), the error comes back from the spawned processes as a
    NonFiniteLossError naming each rank's loss, and the checkpoint on disk is the one of a clean 1-epoch run."""
    source, _ = squares
    params = tiny_params(devices=2, strategy="ddp_spawn", batch_size=4, epochs=2)
    ref = train(tiny_params(devices=2, strategy="ddp_spawn", batch_size=4, epochs=1), source,
                out_dir=tmp_path / "ref", export_embeddings=False)
    monkeypatch.setenv(FAULT_LOSS_ENV, "2:1:nan:1")
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=rf"run {re.escape(str(out))}: non-finite loss per rank 0: "
                                                 rf"[-0-9.e]+, 1: nan at epoch 2 of 2, batch 1 of 2, global step 3 "):
        train(params, source, out_dir=out, fault_loss=fault_loss_from_env())
    last = out / "checkpoints" / "last.ckpt"
    assert epochs_in_checkpoint(last) == 1
    _assert_same_state(_state(last), _state(ref.checkpoint), atol=1e-6)
