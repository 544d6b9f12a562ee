import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from idtprior.models import ClipDataModule, PretrainModule, load_encoder, train
from idtprior_testutils import knn_reference

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
    # the epoch's kNN monitor, against a brute-force float64 reference on the bank it read (one batch: the final one;
    # an untrained bank scores 0.25 here, a monitor that let each row vote for itself would score 1.0)
    want = knn_reference(module.bank.bank.numpy(), np.asarray(labels), k=params.knn_k, tau=params.tau)
    assert float(trainer.callback_metrics["knn_acc"]) == pytest.approx(want, abs=1e-6)
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


def _csv_epochs(out_dir):
    """{version folder: epochs whose epoch-mean loss it logged}, one folder per start of the run."""
    import csv

    out = {}
    for path in sorted(out_dir.glob("csv/version_*/metrics.csv")):
        with open(path, newline="") as f:
            out[path.parent.name] = sorted({int(r["epoch"]) for r in csv.DictReader(f) if r.get("loss_epoch")})
    return out


def test_a_run_set_to_more_epochs_continues_and_ends_as_a_straight_run(squares, tiny_params, tmp_path):
    """1 epoch, then the same run set to 2: epoch 0 is not repeated, and the weights, optimiser and lr (milestone 1,
    passed only in the second start) equal a straight 2-epoch run's. A run set to fewer epochs than its checkpoint
    is refused rather than handing back the longer run."""
    source, _ = squares
    straight = train(tiny_params(epochs=2), source, out_dir=tmp_path / "straight", export_embeddings=False)
    train(tiny_params(epochs=1), source, out_dir=tmp_path / "grown", export_embeddings=False)
    grown = train(tiny_params(epochs=2), source, out_dir=tmp_path / "grown", export_embeddings=False)
    assert _csv_epochs(tmp_path / "grown") == {"version_0": [0], "version_1": [1]}
    assert straight.epochs_completed == grown.epochs_completed == 2
    (a, opt_a), (b, opt_b) = _final_state(tmp_path / "straight"), _final_state(tmp_path / "grown")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, equal_nan=True, msg=key)
    assert opt_a["param_groups"][0]["lr"] == opt_b["param_groups"][0]["lr"] == 0.015
    from idtprior.models.checkpoints import epochs_in_checkpoint

    assert epochs_in_checkpoint(grown.checkpoint) == 2
    with pytest.raises(ValueError, match=r"last.ckpt: 2 epochs done, more than this run's epochs 1"):
        train(tiny_params(epochs=1), source, out_dir=tmp_path / "grown", export_embeddings=False)


def test_noise_seeds_differ_per_rank_and_epoch_and_depend_on_nothing_else():
    from idtprior.models.lightning import noise_seed

    seeds = {(e, r): noise_seed(0, e, r) for e in range(3) for r in range(4)}
    assert len(set(seeds.values())) == 12
    assert noise_seed(0, 1, 2) == seeds[1, 2] and noise_seed(1, 1, 2) != seeds[1, 2]


def _planted_joint(n_groups=4, per_group=6, lonely=8, seed=0, d=16):
    """Bank and sketch rows of ``n_groups`` tight groups, plus ``lonely`` videos without a sketch (zero rows)."""
    rng = np.random.default_rng(seed)
    centres_b, centres_s = rng.standard_normal((n_groups, d)), rng.standard_normal((n_groups, 12))
    group = np.repeat(np.arange(n_groups), per_group)
    bank = centres_b[group] + 0.05 * rng.standard_normal((len(group), d))
    sketch = centres_s[group] + 0.05 * rng.standard_normal((len(group), 12))
    bank = np.concatenate([bank, rng.standard_normal((lonely, d))])
    sketch = np.concatenate([sketch, np.zeros((lonely, 12))])
    valid = np.arange(len(bank)) < len(group)
    order = rng.permutation(len(bank))  # the sketchless videos spread among the others
    return (torch.as_tensor(bank[order], dtype=torch.float32), torch.as_tensor(sketch[order], dtype=torch.float32),
            valid[order], np.concatenate([group, -1 - np.arange(lonely)])[order])


def _shares_a_cluster(labels, i):
    return any(int((row == row[i]).sum()) > 1 for row in labels)


def test_joint_clusters_give_videos_without_a_sketch_clusters_of_their_own():
    from idtprior.models import cluster_joint

    bank, sketch, valid, truth = _planted_joint()
    lonely = np.nonzero(~valid)[0]
    # without the mask, the zero sketch rows pull the sketchless videos into clusters of their own kind
    unmasked = cluster_joint(bank, sketch, 5, runs=3, seed=0).numpy()
    assert any(_shares_a_cluster(unmasked, i) for i in lonely)
    labels = cluster_joint(bank, sketch, 4, runs=3, seed=0, valid=valid).numpy()  # (3, 32)
    assert labels.shape == (3, 32)
    for i in lonely:
        assert not _shares_a_cluster(labels, i), f"video {i} without a sketch shares a cluster"
    for row in labels:  # the planted groups are recovered among the videos with a sketch
        assert len({(int(t), int(c)) for t, c in zip(truth[valid], row[valid])}) == 4
    with pytest.raises(ValueError, match=r"n_clusters 25 must be in \[1, 24\] \(the videos with an IDT sketch, of 32"):
        cluster_joint(bank, sketch, 25, runs=1, seed=0, valid=valid)


def test_joint_la_module_clusters_only_the_videos_with_a_sketch(tiny_params):
    bank, sketch, valid, _ = _planted_joint()
    params = tiny_params(objective="la", cluster_source="joint", n_clusters=4, kmeans_runs=2)
    module = PretrainModule(params, 32, idt_sketch=sketch.numpy(), idt_valid=valid)
    module.bank.bank.copy_(torch.nn.functional.normalize(bank, dim=1))
    module.recompute_clusters(seed=0)
    labels = module.cluster_labels.numpy()
    assert all(not _shares_a_cluster(labels, i) for i in np.nonzero(~valid)[0])
    assert all(len(np.unique(row[valid])) == 4 for row in labels)
    with pytest.raises(ValueError, match="n_clusters 25 exceeds the 24 of 32 videos that have an IDT sketch"):
        PretrainModule(tiny_params(objective="la", cluster_source="joint", n_clusters=25), 32,
                       idt_sketch=sketch.numpy(), idt_valid=valid)


class _RecordNoise(pl.Callback):
    """Writes each rank's NCE noise generator state at the first batch of every epoch to ``folder`` (the ranks of
    ``ddp_spawn`` are other processes: files are how they report)."""

    def __init__(self, folder) -> None:
        self.folder = str(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            torch.save(pl_module.noise_generator.get_state(),
                       f"{self.folder}/rank{trainer.global_rank}-epoch{trainer.current_epoch}.pt")


@pytest.fixture
def file_system_sharing():
    # ddp_spawn hands the module's CPU tensors to its processes through shared memory; here the default
    # file-descriptor strategy fails in the child ("unable to resize file ... Invalid argument")
    import torch.multiprocessing as mp

    old = mp.get_sharing_strategy()
    mp.set_sharing_strategy("file_system")
    yield
    mp.set_sharing_strategy(old)


@pytest.mark.slow  # three 2-process fits: about 30 s on 2 CPU cores
def test_after_a_ddp_resume_each_rank_draws_its_own_noise_as_in_an_uninterrupted_run(squares, tiny_params, tmp_path,
                                                                                   file_system_sharing):
    """Two CPU processes (gloo, ddp_spawn): a run killed after epoch 0 and resumed draws, on each rank, the noise the
    uninterrupted run draws in epoch 1; the ranks' noise differs. (setup() runs before the checkpoint restore, so a
    rank-seeded generator carried in the checkpoint would give every rank rank 0's stream.)"""
    source, _ = squares
    params = tiny_params(devices=2, strategy="ddp_spawn", batch_size=4)
    for name in ("whole", "cut"):
        (tmp_path / f"noise-{name}").mkdir()
    train(params, source, out_dir=tmp_path / "whole", export_embeddings=False,
          callbacks=[_RecordNoise(tmp_path / "noise-whole")])
    with pytest.raises(Exception, match="killed"):
        train(params, source, out_dir=tmp_path / "cut", callbacks=[_Kill(1)])
    (tmp_path / "noise-cut").mkdir(exist_ok=True)
    resumed = train(params, source, out_dir=tmp_path / "cut", export_embeddings=False,
                    callbacks=[_RecordNoise(tmp_path / "noise-cut")])
    assert resumed.epochs_completed == 2  # read from the checkpoint: the fit ran in the spawned processes
    assert sorted(p.name for p in (tmp_path / "noise-cut").iterdir()) == ["rank0-epoch1.pt", "rank1-epoch1.pt"]

    def state(name, rank, epoch):
        return torch.load(tmp_path / f"noise-{name}" / f"rank{rank}-epoch{epoch}.pt")

    for rank in (0, 1):
        assert torch.equal(state("cut", rank, 1), state("whole", rank, 1)), f"rank {rank} drew other noise"
    assert not torch.equal(state("cut", 0, 1), state("cut", 1, 1))
    assert not torch.equal(state("whole", 0, 0), state("whole", 1, 0))
    (a, _), (b, _) = _final_state(tmp_path / "whole"), _final_state(tmp_path / "cut")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
