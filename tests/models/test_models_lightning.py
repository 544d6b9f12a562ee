import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from idtprior.models import ClipDataModule, PretrainModule, load_encoder, train

CONFIGS = [
    dict(objective="ir"),
    dict(objective="ir", ir_exact=True),
    dict(objective="la", cluster_source="idt"),
    dict(objective="la", cluster_source="bank"),
    dict(objective="la", cluster_source="joint"),
]


def _extras(params, n, labels):
    rng = np.random.default_rng(0)
    return dict(
        cluster_labels=np.stack([labels, rng.integers(0, 3, n)]) if params.cluster_source == "idt" else None,
        idt_sketch=rng.standard_normal((n, 12)).astype(np.float32) if params.cluster_source == "joint" else None,
    )


@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_fast_dev_run(overrides, squares, tiny_params):
    source, labels = squares
    params = tiny_params(**overrides)
    module = PretrainModule(params, len(source), labels_for_eval=labels, **_extras(params, len(source), labels))
    bank_before = module.bank.bank.clone()
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                         logger=False)
    trainer.fit(module, datamodule=ClipDataModule(source, 4, 32, batch_size=4))
    assert np.isfinite(float(trainer.callback_metrics["loss_epoch"]))
    assert 0.0 <= float(trainer.callback_metrics["knn_acc"]) <= 1.0
    changed = (module.bank.bank != bank_before).any(1)
    assert int(changed.sum()) == 4  # one batch: exactly its four rows moved
    if overrides.get("cluster_source") in ("bank", "joint"):
        assert module.cluster_labels.shape == (2, 16) and len(module.cluster_labels.unique()) == 4


def test_params_are_validated(tiny_params):
    with pytest.raises(ValueError, match="objective 'nce'"):
        tiny_params(objective="nce")
    with pytest.raises(ValueError, match="milestones"):
        tiny_params(milestones=(5, 2))
    with pytest.raises(ValueError, match=r"needs cluster_labels"):
        PretrainModule(tiny_params(objective="la"), 16)


def test_weight_decay_spares_batchnorm_and_biases(tiny_params):
    module = PretrainModule(tiny_params(), 16)
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert groups[0]["weight_decay"] == 1e-4 and all(p.ndim > 1 for p in groups[0]["params"])
    assert groups[1]["weight_decay"] == 0.0 and all(p.ndim == 1 for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(module.parameters()))


class _Kill(pl.Callback):
    """Simulates a killed job: dies at the start of the given epoch, after the previous epoch's checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")


def _final_state(out_dir):
    state = torch.load(out_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return state["state_dict"], state["optimizer_states"][0]


@pytest.mark.parametrize("overrides", [dict(objective="ir"), dict(objective="la", cluster_source="bank")],
                         ids=["ir", "la-bank"])
def test_resumed_run_equals_uninterrupted_run(overrides, squares, tiny_params, tmp_path):
    source, labels = squares
    params = tiny_params(**overrides)
    whole = train(params, source, out_dir=tmp_path / "whole", labels_for_eval=labels, export_embeddings=False)
    with pytest.raises(RuntimeError, match="killed"):
        train(params, source, out_dir=tmp_path / "cut", labels_for_eval=labels, callbacks=[_Kill(1)])
    assert (tmp_path / "cut" / "checkpoints" / "last.ckpt").exists()
    resumed = train(params, source, out_dir=tmp_path / "cut", labels_for_eval=labels, export_embeddings=False)
    assert whole.epochs_completed == resumed.epochs_completed == 2
    (a, opt_a), (b, opt_b) = _final_state(tmp_path / "whole"), _final_state(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, equal_nan=True, msg=key)  # log_z is nan for LA
    assert opt_a["param_groups"][0]["lr"] == opt_b["param_groups"][0]["lr"] == 0.015  # one step drop at epoch 1
    np.testing.assert_allclose(np.load(whole.bank), np.load(resumed.bank), atol=1e-6)


def test_train_exports_encoder_bank_embeddings_and_inits_from_a_run(squares, tiny_params, tmp_path):
    source, labels = squares
    ir = train(tiny_params(epochs=1), source, out_dir=tmp_path / "ir", labels_for_eval=labels)
    emb = np.load(ir.embeddings)
    assert emb.shape == (16, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.load(ir.bank).shape == (16, 16) and "knn_acc" in ir.metrics
    assert "loss_epoch" in ir.metrics_csv.read_text().splitlines()[0]
    encoder = load_encoder(ir.encoder)
    assert encoder.embed_dim == 16
    la_params = tiny_params(epochs=1, objective="la", cluster_source="idt")
    module = PretrainModule(la_params, 16, cluster_labels=labels)
    module.load_init(ir.checkpoint)
    torch.testing.assert_close(module.bank.bank, torch.as_tensor(np.load(ir.bank)))
    la = train(la_params, source, out_dir=tmp_path / "la", init_from=ir.checkpoint, cluster_labels=labels[None],
               export_embeddings=False)
    assert la.embeddings is None and np.isfinite(la.metrics["loss_epoch"])
    with pytest.raises(ValueError, match=r"bank shape \(16, 16\), this run needs \(15, 16\)"):
        PretrainModule(la_params, 15, cluster_labels=labels[:15]).load_init(ir.checkpoint)


def test_nce_normaliser_starts_from_the_first_batch_then_is_a_running_average(tiny_params):
    module = PretrainModule(tiny_params(nce_z_momentum=0.9), 16)
    assert torch.isnan(module.log_z)
    module._update_log_z(torch.tensor(2.0))
    assert float(module.log_z) == pytest.approx(2.0)
    module._update_log_z(torch.tensor(3.0))
    assert float(module.log_z) == pytest.approx(np.log(0.9 * np.exp(2.0) + 0.1 * np.exp(3.0)), abs=1e-6)
    fixed = PretrainModule(tiny_params(nce_z_momentum=1.0), 16)  # Wu et al.: Z fixed after the first batch
    fixed._update_log_z(torch.tensor(2.0))
    fixed._update_log_z(torch.tensor(3.0))
    assert float(fixed.log_z) == pytest.approx(2.0)
