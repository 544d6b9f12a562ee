"""``idtprior plan``: the network's cost against torch's own FLOP counter, the plan's arithmetic as properties (work
linear in videos, wall time over cores, exact sketch bytes, the GPU path), the packaged units, and the command."""

import math

import pytest
import torch

from idtprior.cli import main
from idtprior.config import bundled_config, load_config
from idtprior.plan import MONTAGE_VIDEOS, kmeans_seconds, one_scale_idt_s, plan
from idtprior.units import ORCHESTRATION_UNITS, Units, network_cost
from idtprior.video.io import resized_shape


def test_network_cost_equals_torchs_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from idtprior.models.resnet3d import resnet3d

    for width, clip, crop in ((0.125, 4, 32), (0.25, 8, 48)):
        net = resnet3d("resnet18", 16, width).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.zeros(1, 3, clip, crop, crop))
        gmac, params = network_cost("resnet18", width, 16, clip, crop)
        assert gmac == pytest.approx(counter.get_total_flops() / 2 / 1e9, rel=1e-6)  # a MAC is two FLOPs
        assert params == sum(p.numel() for p in net.parameters())


def test_packaged_units_are_complete_and_name_their_machine():
    units = Units.load()
    assert units.machine and units.measured and units.how
    for key, value in units.__dict__.items():
        if isinstance(value, float) and key != "detect_s_per_frame":
            assert math.isfinite(value) and value >= 0, key
    assert units.decode_s_per_frame > 0 and units.idt_s_per_frame + units.idt_s_per_mpix * 0.0192 > 0
    assert units.gpu["train_clips_per_s"] > 0 and units.gpu["gmac_per_clip"] > 0


def test_plan_is_linear_in_videos_and_spreads_over_cores():
    cfg = load_config(bundled_config("kinetics400"))
    units = Units.load()
    stages = ["ingest", "decode", "idt", "encode", "cluster", "pretrain_ir"]
    one = {r.stage: r for r in plan(cfg, units, 10_000, cores=16, train_fraction=1.0, stages=stages)}
    two = {r.stage: r for r in plan(cfg, units, 20_000, cores=16, train_fraction=1.0, stages=stages)}
    wide = {r.stage: r for r in plan(cfg, units, 10_000, cores=32, train_fraction=1.0, stages=stages)}
    for stage in ("ingest", "decode", "encode"):
        assert two[stage].core_hours == pytest.approx(2 * one[stage].core_hours)
        compute = one[stage].core_hours * 3600 / 16
        assert one[stage].wall_s - wide[stage].wall_s == pytest.approx(compute / 2)
    assert two["idt"].core_hours == pytest.approx(one["idt"].core_hours)  # a fixed sample of videos (3500)
    # k-means (kmeans_seconds): its distance products over the cores (BLAS), the rest and the montage's IDT tracks
    # (a fixed 24 videos) in the flow's process, whatever the cores
    dh, dw = resized_shape(256, 340, short_side=cfg.decode.short_side)
    montage_s = MONTAGE_VIDEOS * (cfg.idt.track_length + 1) * one_scale_idt_s(units, dh, dw, cfg.idt)
    c = cfg.cluster
    for n, rows in ((10_000, one), (20_000, two)):
        products, rest = kmeans_seconds(units, n, c.k, cfg.codebook.sketch_dim, c.iters, c.runs * c.n_init)
        assert rows["cluster"].core_hours * 3600 == pytest.approx(products + rest + montage_s)
        assert rows["cluster"].wall_s == pytest.approx(products / 16 + rest + montage_s + units.stage_overhead_s)
    products, _ = kmeans_seconds(units, 10_000, c.k, cfg.codebook.sketch_dim, c.iters, c.runs * c.n_init)
    assert one["cluster"].wall_s - wide["cluster"].wall_s == pytest.approx(products / 32)
    assert one["encode"].storage_bytes == 10_000 * cfg.codebook.sketch_dim * 4  # the sketches, float32
    # EM: in the flow's one process, whatever the cores (numpy's element-wise work on one thread)
    fit = {c: plan(cfg, units, 10_000, cores=c, stages=["fit_codebook"])[0] for c in (2, 32)}
    assert fit[2].wall_s == fit[32].wall_s == pytest.approx(fit[2].core_hours * 3600 + units.stage_overhead_s)
    assert "in one process" in fit[2].basis
    # the frames' codec: the same work, the stored bytes at its measured ratio, and the bytes a frame said
    jpeg = {r.stage: r for r in plan(cfg.with_updates(decode={"codec": "jpeg"}), units, 10_000, cores=16,
                                     train_fraction=1.0, stages=["decode"])}["decode"]
    assert jpeg.core_hours == one["decode"].core_hours
    assert jpeg.storage_bytes == pytest.approx(one["decode"].storage_bytes
                                               * units.frame_bytes_ratio_jpeg / units.frame_bytes_ratio)
    assert 0 < units.frame_bytes_ratio_jpeg < units.frame_bytes_ratio / 2  # KTH: 0.084 against 0.285
    assert "KB a stored frame (jpeg, measured at quality 90)" in jpeg.basis and "(zstd)" in one["decode"].basis
    assert one["pretrain_ir"].gpu_hours == 0 and one["pretrain_ir"].core_hours > 0  # --gpus 0: on the CPU
    gpu = {r.stage: r for r in plan(cfg, units, 10_000, cores=16, gpus=8, train_fraction=1.0, stages=stages)}["pretrain_ir"]
    clips = cfg.pretrain_ir.epochs * 10_000
    assert gpu.gpu_hours * 3600 >= clips / units.gpu["train_clips_per_s"]  # this network is the paper's
    assert gpu.wall_s < one["pretrain_ir"].wall_s


def test_kmeans_seconds_counts_each_part_and_seeds_as_kmeans_does():
    """Each unit of kmeans_seconds multiplies its own count; the seeding is k-means++ exactly where encoding.kmeans's
    "auto" picks it (same centroids from "auto" as from "k-means++" on the demo's shape), random at Kinetics' K."""
    import numpy as np

    from idtprior.encoding import kmeans

    zero = Units(**{**Units.load().__dict__, **{k: 0.0 for k in Units.load().__dict__ if k.startswith("kmeans_")}})

    def only(**units: float) -> Units:
        return Units(**{**zero.__dict__, **units})

    n, k, d, iters, calls = 240, 12, 2000, 20, 30  # the demo's clustering: 3 runs x 10 restarts
    trials = 2 + int(math.log(k))
    for unit, products, rest in (("kmeans_s_per_iteration", 0, calls * (iters + 1)),
                                 ("kmeans_s_per_row_dim", 0, calls * (iters + 1) * n * d),
                                 ("kmeans_s_per_row_centroid_dim", calls * (iters + 1) * n * k * d, 0),
                                 ("kmeans_s_per_seed_step", 0, calls * (k - 1)),
                                 ("kmeans_s_per_seed_distance", calls * (k - 1) * trials * n * d, 0)):
        assert kmeans_seconds(only(**{unit: 1.0}), n, k, d, iters, calls) == (products, rest), unit
    assert kmeans_seconds(only(kmeans_s_per_seed_step=1.0), n, k, d, iters, calls, init="random") == (0, 0)
    assert kmeans_seconds(only(kmeans_s_per_seed_step=1.0), 235_000, 6000, 2000, 20, 3) == (0, 0)  # random rows
    x = np.random.default_rng(0).standard_normal((n, 64)).astype(np.float32)
    auto, plus = (kmeans(x, k, runs=1, iters=0, init=i)[1] for i in ("auto", "k-means++"))
    assert np.array_equal(auto, plus)
    assert not np.array_equal(auto, kmeans(x, k, runs=1, iters=0, init="random")[1])


def test_plan_command_prints_every_stage_and_refuses_a_bad_size(capsys):
    assert main(["plan", "demo", "--videos", "240", "--mean-seconds", "2.56", "--frame-size", "160x120",
                 "--cores", "2"]) == 0
    out = capsys.readouterr().out
    cfg = load_config(bundled_config("demo"))
    for stage in cfg.stages:
        assert f"| {stage} |" in out
    assert "| total |" in out and "per-unit costs:" in out
    assert main(["plan", "demo", "--videos", "240", "--frame-size", "160by120"]) == 2
    assert "--frame-size '160by120': expected WIDTHxHEIGHT" in capsys.readouterr().err


@pytest.mark.slow
def test_calibration_measures_every_unit_here(capsys):
    from idtprior.units import measure_units

    units = measure_units(quick=True)
    skip = ("detect_s_per_frame", "decode_s_per_mpix", "idt_s_per_frame", *ORCHESTRATION_UNITS)  # the latter: a run's
    for key, value in units.__dict__.items():
        if isinstance(value, float) and key not in skip:
            assert math.isfinite(value) and value > 0, key
    assert 0 < units.em_iters_fraction <= 1
    assert main(["plan", "demo", "--videos", "24", "--calibrate", "--cores", "2"]) == 0
    assert "calibrated here" in capsys.readouterr().out


def test_the_cluster_montage_is_modelled_as_the_stage_draws_it():
    """The plan's montage is the stage's: as many videos as cluster_markdown draws (6 clusters x 4), each an IDT window
    of track_length + 1 frames at the finest scale (drawing_params), costed from IDT's units over the pyramid's area."""
    import inspect

    from idtprior.stages.cluster import cluster_markdown
    from idtprior.stages.idt import drawing_params
    from idtprior.stages.idt import idt_params
    from idtprior.video.idt.extract import pyramid_scales

    defaults = inspect.signature(cluster_markdown).parameters
    assert MONTAGE_VIDEOS == defaults["n_clusters"].default * defaults["per_cluster"].default
    cfg = load_config(bundled_config("demo"))
    assert drawing_params(cfg.idt).scale_num == 1
    units = Units.load()
    full = units.idt_s_per_frame + units.idt_s_per_mpix * 128 * 170 / 1e6
    one = one_scale_idt_s(units, 128, 170, cfg.idt)
    area = sum(h * w for _, (h, w) in pyramid_scales(128, 170, idt_params(cfg.idt))) / (128 * 170)  # the stage's
    assert 1.9 < area < 2.0  # scales of 1, 1/2, 1/4, ... the pixels
    assert one == pytest.approx(units.idt_s_per_frame + (full - units.idt_s_per_frame) / area)
    rows = {r.stage: r for r in plan(cfg, units, 240, 64 / 25, 25.0, 160, 120, cores=2, stages=["cluster"])}
    assert "the montage's IDT tracks of 24 videos" in rows["cluster"].basis
    few = {r.stage: r for r in plan(cfg, units, 10, 64 / 25, 25.0, 160, 120, cores=2, stages=["cluster"])}
    assert "IDT tracks of 10 videos" in few["cluster"].basis
