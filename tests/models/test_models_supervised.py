"""The supervised baseline's objective: its loss against a reference, and the module learning a planted labelling."""

import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from idtprior_testutils import knn_reference

from idtprior.models import PretrainModule, load_encoder, train
from idtprior.models.losses import supervised_loss
from idtprior.models.resnet3d import ResNet3d


def test_supervised_loss_is_the_cross_entropy_of_the_labelled_rows():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen, requires_grad=True)
    targets = torch.tensor([2, -1, 0, 3, -1, 1])
    x = logits.detach().numpy().astype(np.float64)
    log_p = x - np.log(np.exp(x).sum(1, keepdims=True))
    rows = [0, 2, 3, 5]
    want = -np.mean([log_p[i, targets[i]] for i in rows])
    got = supervised_loss(logits, targets)
    assert float(got.detach()) == pytest.approx(want, rel=1e-6)
    got.backward()
    assert torch.all(logits.grad[[1, 4]] == 0) and torch.all(logits.grad[rows].abs().sum(1) > 0)
    # a batch without a labelled row: 0, with a graph (zero gradients)
    none = supervised_loss(logits, torch.full((6,), -1))
    assert float(none) == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match=r"targets up to 4 for 4 classes"):
        supervised_loss(logits, torch.tensor([4, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"logits \(6, 4\) and targets \(5,\)"):
        supervised_loss(logits, torch.zeros(5, dtype=torch.long))


def test_supervised_module_is_checked_and_starts_from_every_stages_initial_encoder(tiny_params):
    params = tiny_params(objective="supervised")
    with pytest.raises(ValueError, match="needs class_labels"):
        PretrainModule(params, 16)
    with pytest.raises(ValueError, match=r"class_labels shape \(15,\) must be \(16,\)"):
        PretrainModule(params, 16, class_labels=np.zeros(15, int))
    with pytest.raises(ValueError, match="none of the 16 videos has a class"):
        PretrainModule(params, 16, class_labels=np.full(16, -1))
    labels = np.array([0, 1, 2, -1] * 4)
    module = PretrainModule(params, 16, class_labels=labels)
    assert module.classifier.weight.shape == (3, module.encoder.feature_dim)
    assert module.hparams["n_classes"] == 3
    # the encoder is the seeded one every other objective starts from (the classifier is drawn after it)
    ir = PretrainModule(tiny_params(objective="ir"), 16)
    for key, value in ir.encoder.state_dict().items():
        torch.testing.assert_close(module.encoder.state_dict()[key], value, rtol=0, atol=0, msg=key)
    # the embedding head gets no gradient from the class loss: frozen, and out of every other objective's way
    assert not any(p.requires_grad for p in module.encoder.fc.parameters())
    assert all(p.requires_grad for p in ir.encoder.fc.parameters()) and ir.classifier is None
    assert "class_labels" not in ir.state_dict() and "classifier.weight" not in ir.state_dict()


def test_supervised_training_step_learns_a_planted_labelling(squares, tiny_params):
    """The module's own training step and optimiser on one fixed batch of moving squares labelled by their motion,
    two of the eight unlabelled (-1, no loss): the class loss falls over 20 steps; the embedding head does not move."""
    from idtprior.models.data import ClipDataset

    source, labels = squares
    class_labels = labels.copy()
    class_labels[[1, 6]] = -1
    module = PretrainModule(tiny_params(objective="supervised"), len(source), class_labels=class_labels)
    ds = ClipDataset(source, clip_length=4, crop_size=32, seed=0)
    indices = torch.arange(8)
    clips = torch.stack([ds[(i, 0)][1] for i in range(8)])
    optimizer = module.configure_optimizers()["optimizer"]
    fc_before = module.encoder.fc.weight.detach().clone()
    losses = []
    with warnings.catch_warnings():  # no trainer here: Lightning warns that the module's self.log is skipped
        warnings.simplefilter("ignore")
        for step in range(20):
            loss = module.training_step((indices, clips), step)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.3 * first, losses
    assert torch.equal(module.encoder.fc.weight, fc_before)


def test_supervised_train_exports_an_encoder_with_its_embedding_head_at_the_seeded_init(squares, tiny_params,
                                                                                      tmp_path):
    source, labels = squares
    params = tiny_params(objective="supervised", epochs=1)
    result = train(params, source, out_dir=tmp_path / "sup", labels_for_eval=labels, class_labels=labels)
    assert np.isfinite(result.metrics["loss_epoch"])
    # the epoch's kNN monitor, against a brute-force float64 reference on the bank the run saved
    want = knn_reference(np.load(result.bank), np.asarray(labels), k=params.knn_k, tau=params.tau)
    assert result.metrics["knn_acc"] == pytest.approx(want, abs=1e-6)
    emb = np.load(result.embeddings)
    assert emb.shape == (16, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    trained = load_encoder(result.encoder).state_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        init = ResNet3d("resnet18", 16, 0.125).state_dict()
    torch.testing.assert_close(trained["fc.weight"], init["fc.weight"], rtol=0, atol=0)
    assert float((trained["conv1.weight"] - init["conv1.weight"]).norm()) > 0
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(state["class_labels"], torch.as_tensor(labels))


class _Kill(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("killed")


def test_resumed_supervised_run_equals_uninterrupted_run(squares, tiny_params, tmp_path):
    source, labels = squares
    params = tiny_params(objective="supervised")
    whole = train(params, source, out_dir=tmp_path / "whole", class_labels=labels, export_embeddings=False)
    with pytest.raises(RuntimeError, match="killed"):
        train(params, source, out_dir=tmp_path / "cut", class_labels=labels, callbacks=[_Kill()])
    resumed = train(params, source, out_dir=tmp_path / "cut", class_labels=labels, export_embeddings=False)
    assert whole.epochs_completed == resumed.epochs_completed == 2
    a = torch.load(whole.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    b = torch.load(resumed.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and "classifier.weight" in a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, equal_nan=True, msg=key)
