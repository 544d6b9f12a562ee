import pytest

from idtprior.config import PipelineConfig, bundled_config, load_config, parse_config
from idtprior.config.base import ConfigError


def test_bundled_configs_carry_the_paper_settings():
    k400 = load_config(bundled_config("kinetics400"))
    assert (k400.idt.sample_videos, k400.idt.sample_rows) == (3500, 500)
    assert (k400.codebook.gmm_components, k400.codebook.sketch_dim) == (256, 2000)
    assert (k400.cluster.k, k400.cluster.runs) == (6000, 3)
    p = k400.pretrain
    assert (p.clip_length, p.crop_size, p.tau, p.negatives, p.la_k) == (16, 112, 0.07, 4096, 4096)
    assert (len(p.crop_scales), p.crop_scales[-1], p.grayscale_p, p.color_jitter, p.hflip, p.ir_exact) == (
        5, 0.5, 0.2, 0.4, True, False)
    assert (k400.pretrain_ir.objective, k400.pretrain_ir.epochs, k400.pretrain_ir.lr) == ("ir", 40, 0.03)
    la = k400.pretrain_la
    assert (la.objective, la.cluster_source, la.epochs, la.lr_milestones, la.init_from) == (
        "la", "idt", 200, (160, 190), "pretrain_ir")
    assert (k400.tune_joint.cluster_source, k400.tune_joint.init_from) == ("joint", "pretrain_la")
    bank, sup = k400.pretrain_la_bank, k400.supervised  # the baselines: Video LA with the paper's K, supervised
    assert (bank.objective, bank.cluster_source, bank.n_clusters, bank.epochs, bank.lr_milestones, bank.init_from) == (
        "la", "bank", 6000, 200, (160, 190), "pretrain_ir")
    assert (sup.objective, sup.label_column, sup.init_from) == ("supervised", "label", None)
    assert (k400.idt.track_length, k400.idt.min_distance, k400.idt.scale_num) == (15, 5, 8)
    demo = load_config(bundled_config("demo"))
    assert demo.demo.videos_per_class * 6 >= 200


def test_unknown_key_is_named_with_its_value():
    with pytest.raises(ConfigError, match=r"unknown key 'decode.shortside'.*160"):
        parse_config({"decode": {"shortside": 160}})


def test_out_of_range_value_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cluster:\n  k: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*cluster.k.*value 1"):
        load_config(path)


def test_unknown_stage_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nosuchstage"):
        parse_config({"stages": ["ingest", "nosuchstage"]})
    path = tmp_path / "broken.yaml"
    path.write_text("decode: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_config_hash_follows_values_only():
    a = PipelineConfig()
    b = a.with_updates(decode={"short_side": 96})
    assert a.decode.config_hash() != b.decode.config_hash()
    assert a.ingest.config_hash() == b.ingest.config_hash()
    assert PipelineConfig().decode.config_hash() == a.decode.config_hash()


def test_train_stage_config_is_checked():
    with pytest.raises(ConfigError, match=r"pretrain_la.*init_from.*'pretrain_xx'"):
        parse_config({"pretrain_la": {"init_from": "pretrain_xx"}})
    # the supervised stage is the supervised objective, and only it is
    with pytest.raises(ConfigError, match=r"supervised\.objective.*\(value 'la'\)"):
        parse_config({"supervised": {"objective": "la"}})
    with pytest.raises(ConfigError, match=r"unknown key 'pretrain_la\.label_column'"):
        parse_config({"pretrain_la": {"label_column": "label"}})
    with pytest.raises(ConfigError, match=r"lr_milestones.*\[20, 10\]"):
        parse_config({"tune_joint": {"lr_milestones": [20, 10]}})


def test_augmentation_settings_are_checked_and_reach_the_trainer():
    from idtprior.stages.pretrain.task import pretrain_params, train_config_fields

    with pytest.raises(ConfigError, match=r"crop_scales \[1.0, 1.5\]"):
        parse_config({"pretrain": {"crop_scales": [1.0, 1.5]}})
    with pytest.raises(ConfigError, match="color_jitter"):
        parse_config({"pretrain": {"color_jitter": 2}})
    with pytest.raises(ConfigError, match=r"pretrain.frame_step.*value 0"):
        parse_config({"pretrain": {"frame_step": 0}})
    paper = parse_config({})
    mild = parse_config({"pretrain": {"crop_scales": [1.0, 0.84], "grayscale_p": 0, "color_jitter": 0.1,
                                      "hflip": False, "ir_exact": True, "frame_step": 2}})
    p = pretrain_params(mild.pretrain, mild.pretrain_ir, 100)
    assert (p.crop_scales, p.grayscale_p, p.color_jitter, p.hflip, p.ir_exact, p.frame_step) == (
        (1.0, 0.84), 0.0, 0.1, False, True, 2)
    q = pretrain_params(paper.pretrain, paper.pretrain_ir, 100)
    assert (q.crop_scales[-1], q.grayscale_p, q.color_jitter, q.hflip, q.ir_exact, q.frame_step) == (
        0.5, 0.2, 0.4, True, False, 1)
    # the training fingerprint follows the augmentation: changing it retrains
    assert train_config_fields(mild.pretrain) != train_config_fields(paper.pretrain)


def test_kinetics_config_trains_with_the_papers_global_batch():
    """The paper's batch of 256 is global (at lr 0.03); ``batch_size`` is per device; and the config's stages reach
    the training stages, so ``idtprior run configs/kinetics400.yaml`` trains."""
    from idtprior.config.training import TRAIN_STAGES

    k400 = load_config(bundled_config("kinetics400"))
    p = k400.pretrain
    assert (p.batch_size, p.devices, p.batch_size * p.devices) == (32, 8, 256)
    assert k400.pretrain_ir.lr == k400.pretrain_la.lr == 0.03
    # the method's three stages close the paper's run; the baselines (pretrain_la_bank, supervised) run on request
    assert k400.stages[-3:] == TRAIN_STAGES[:3] == ("pretrain_ir", "pretrain_la", "tune_joint")
    assert "cluster" in k400.stages


def test_nce_normaliser_momentum_is_a_setting_and_part_of_the_training_key():
    from idtprior.stages.pretrain.task import pretrain_params, train_config_fields

    paper, fixed = parse_config({}), parse_config({"pretrain": {"nce_z_momentum": 1.0}})
    assert paper.pretrain.nce_z_momentum == 0.99
    assert pretrain_params(fixed.pretrain, fixed.pretrain_ir, 100).nce_z_momentum == 1.0
    assert pretrain_params(paper.pretrain, paper.pretrain_ir, 100).nce_z_momentum == 0.99
    assert train_config_fields(fixed.pretrain) != train_config_fields(paper.pretrain)
    with pytest.raises(ConfigError, match=r"pretrain.nce_z_momentum.*value 1.5"):
        parse_config({"pretrain": {"nce_z_momentum": 1.5}})


def test_every_setting_declares_a_valid_key_rule_and_the_rules_hold():
    from idtprior.config.base import KEY_RULES, Section
    from idtprior.config.stages import ClusterConfig, DetectConfig
    from idtprior.keyscheme import legacy_keys

    def sections(cls):
        yield cls
        for sub in cls.__subclasses__():
            yield from sections(sub)

    for cls in sections(Section):
        for name in cls.model_fields:
            rule = cls.key_rule(name)
            assert rule in KEY_RULES[:3] or (rule.startswith("if:") and rule[3:].split("=")[0] in cls.model_fields), \
                f"{cls.__name__}.{name}: key rule {rule!r}"
    # how a detector runs is not what it finds; the weights are keyed by content, not by path
    base = DetectConfig().config_hash()
    assert DetectConfig(device="cuda:1", batch_size=64, maskrcnn_weights="/a/b.pth").config_hash() == base
    assert DetectConfig(every=2).config_hash() != base
    with legacy_keys():  # what keys held before behaviour versions: these settings were in them
        assert DetectConfig(device="cuda:1").config_hash() != DetectConfig().config_hash()
    # k-means' implementation is a setting: numpy keeps the keys of workspaces clustered before it existed
    assert ClusterConfig(backend="numpy").config_hash() == ClusterConfig().config_hash()
    assert ClusterConfig(backend="faiss").config_hash() != ClusterConfig().config_hash()
    with pytest.raises(ValueError, match="key rule 'sometimes'"):
        from idtprior.config.base import key

        key("sometimes")
