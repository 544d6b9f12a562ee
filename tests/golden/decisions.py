"""The choices the cores make by size, at the sizes of the bundled configs: the part of a stage's behaviour that its
golden cannot see, because the golden's fixture is tiny and these choices only flip at scale.

K-means seeds with k-means++ or with random rows depending on k x rows x dimensions (``kmeans.auto_init``); the GMM
initialises on a sample of ``gmm_init_sample`` rows; EM, k-means and the kNN work in blocks whose size follows the
number of clusters or videos; a frame is shrunk or enlarged to the decode size. ``trace(name)`` asks the cores'
own functions and defaults for each choice at the config's sizes; ``tests/golden/test_decision_trace.py`` compares the
trace with ``data/decisions.json``. A choice that moves changes what the stage computes at that size (bump the
stage's behaviour version) or, for a block size, at most its float rounding; either way it is pinned again with::

    python tests/golden/decisions.py write

Sizes: the demo's videos, and its training split, from its own generator (``datasets.synthetic.plan_videos``);
Kinetics-400's 235,000 videos (the paper; README), all of them in training as the config's ``train_split`` reads the
whole training set. The codebook sample is ``idt.sample_videos x idt.sample_rows`` rows (every sampled video giving its
full share). Kinetics' frame sizes vary, so its decode and IDT pyramid choices are not traced.
"""

import importlib
import inspect
import json
import math
import re
import sys
from pathlib import Path

DECISIONS_FILE = Path(__file__).resolve().parent / "data" / "decisions.json"
CONFIGS = ("demo", "kinetics400")
KINETICS_VIDEOS = 235_000
MAX_DESCRIPTOR_DIM = 426  # a concat PCA keeps at most this many dimensions

# the stages (as versioned: behaviour_version) whose results a section's choices shape
STAGES_OF_SECTION = {"decode": ("decode", "decode@jpeg"), "idt": ("idt", "idt@torch"),
                     "fit_codebook": ("fit_codebook",), "encode": ("encode", "encode@torch"), "cluster": ("cluster",)}
TRAINING_STAGES = ("pretrain_ir", "pretrain_la", "tune_joint", "pretrain_la_bank", "supervised")


def default(func, name: str):
    """The default of parameter ``name`` of ``func``: the value the core runs with when its caller does not say."""
    return inspect.signature(func).parameters[name].default


def stages_of(section: str) -> tuple[str, ...]:
    """The versioned stages a trace section belongs to (every training stage runs ``pretrain``'s code)."""
    return ("pretrain",) if section in TRAINING_STAGES else STAGES_OF_SECTION[section]


def kmeans_choices(n: int, k: int, d: int) -> dict:
    """What ``encoding.kmeans.kmeans`` decides for ``n`` rows of ``d`` dimensions into ``k`` clusters, with its default
    ``init`` and memory budget: the seeding, the rows k-means++ seeds from, the rows per assignment block."""
    km = importlib.import_module("idtprior.encoding.kmeans")  # the package re-exports the function under this name

    init = default(km.kmeans, "init")
    seeding = km.auto_init(n, k, d) if init == "auto" else init
    rows = km._chunk_rows(k, default(km.kmeans, "memory_budget_bytes"))
    return {"init": init, "seeding": seeding,
            "kpp_sample_rows": km.kpp_sample_rows(n, k) if seeding == "k-means++" else None,
            "assign_block_rows": rows, "assign_blocks": math.ceil(n / rows)}


def seeding_by_dim(n: int, k: int, max_dim: int = MAX_DESCRIPTOR_DIM) -> dict[str, list[int]]:
    """``auto_init``'s seeding for every dimension 1..max_dim, as ``{seeding: [lowest, highest dimension]}`` (a PCA
    keeps a data-dependent number of dimensions)."""
    km = importlib.import_module("idtprior.encoding.kmeans")

    spans: dict[str, list[int]] = {}
    for d in range(1, max_dim + 1):
        span = spans.setdefault(km.auto_init(n, k, d), [d, d])
        span[1] = d
    return spans


def codebook_choices(rows: int, cfg) -> dict:
    """PCA and GMM block sizes and the GMM's initialisation for a codebook sample of ``rows`` rows."""
    from idtprior.encoding.codebook import DESCRIPTOR_TYPES, fit_pca
    from idtprior.encoding.gmm import fit_gmm, init_sample_rows
    from idtprior.stages.fit_codebook import codebook_params

    params = codebook_params(cfg)  # what the fit_codebook stage fits with
    k = params.n_components
    m = init_sample_rows(rows, k, params.gmm_init_sample)
    if params.pca_mode == "per_type":  # each type halved (codebook.py)
        dims: list[int | None] = [d // 2 for _, d in DESCRIPTOR_TYPES]
    else:
        dims = [None]  # as many as keep pca_variance of the variance
    pca_rows = default(fit_pca, "chunk_rows")
    blocks = []
    for d in dims:
        # the sample's hard assignment to the initial means, for the initial variances: blocks of chunk_rows
        init = {"method": params.gmm_init, "sample_rows": m, "variance_assign_block_rows": params.chunk_rows}
        if params.gmm_init == "kmeans":  # k-means++ seeding then Lloyd on the sample (gmm.fit_gmm)
            init["kmeans"] = kmeans_choices(m, k, d) if d is not None else {"seeding_by_dim": seeding_by_dim(m, k)}
        blocks.append({"pca_dim": d, "init": init})
    return {"rows": rows, "components": k, "pca_block_rows": pca_rows, "pca_blocks": math.ceil(rows / pca_rows),
            "em_block_rows": params.chunk_rows, "em_blocks": math.ceil(rows / params.chunk_rows),
            "em_precision": default(fit_gmm, "precision"), "blocks": blocks}


def encode_choices(cfg) -> dict:
    """The Fisher vector's length, block size and statistics precision, and the sketch it is projected to."""
    from idtprior.encoding.codebook import DESCRIPTOR_TYPES
    from idtprior.encoding.fisher import fisher_vector
    from idtprior.encoding.gmm import chunk_stats

    k = cfg.gmm_components
    fv_dim = 2 * k * sum(d // 2 for _, d in DESCRIPTOR_TYPES) if cfg.pca_mode == "per_type" else None
    return {"fv_dim": fv_dim, "fv_dim_per_pca_dim": 2 * k, "fisher_block_rows": default(fisher_vector, "chunk_rows"),
            "statistics_precision": default(chunk_stats, "precision"), "sketch_dim": cfg.sketch_dim}


def training_choices(n: int, shared, stage, sketch_dim: int) -> dict:
    """What a training stage's cores decide for ``n`` training videos: the last partial batch, the kNN monitor's
    blocks, and for a per-epoch clustering (``bank`` / ``joint``) the K-means on the CPU (``encoding.kmeans``) and on
    a GPU (``models.clustering.lloyd_kmeans``: where the bank is when the stage trains on one)."""
    import numpy as np

    from idtprior.models import clustering
    from idtprior.models.data import ClipDataModule, FunctionClipSource

    source = FunctionClipSource(lambda i, s, n_: np.zeros((n_, 1, 1, 3), np.uint8), lambda i: 1, n)
    data = ClipDataModule(source, shared.clip_length, shared.crop_size, shared.batch_size, 0, shared.seed,
                          drop_last=True)  # pretrain_params: drop_last=True
    out = {"videos": n, "accelerator": shared.accelerator, "drop_last": data.drop_last,
           "knn_monitor_block_rows": clustering.block_rows(n)}
    if stage.objective == "la" and stage.cluster_source in ("bank", "joint"):
        d = shared.embed_dim + (sketch_dim if stage.cluster_source == "joint" else 0)  # [bank | sketch]
        out["kmeans"] = {"k": stage.n_clusters, "d": d, "cpu": kmeans_choices(n, stage.n_clusters, d),
                         "gpu": {"kpp_sample_rows": clustering.kpp_subsample_rows(n, stage.n_clusters),
                                 "assign_block_rows": clustering.block_rows(stage.n_clusters)}}
    return out


def trace(name: str) -> dict:
    """The size-dependent choices of every stage of bundled config ``name`` (see the module docstring)."""
    from idtprior.config import bundled_config, load_config
    from idtprior.datasets.synthetic import plan_videos
    from idtprior.stages.idt import idt_params
    from idtprior.video.idt import pyramid_scales
    from idtprior.video.io import resized_shape

    cfg = load_config(bundled_config(name))
    out: dict = {}
    if name == "demo":
        demo = cfg.demo
        plan = plan_videos(demo.videos_per_class, demo.test_fraction, demo.camera_motion_fraction, demo.seed,
                           demo.heldout_appearance)
        videos, train = len(plan), sum(v.split == "train" for v, _ in plan)
        hw = (demo.height, demo.width)
        decoded = resized_shape(*hw, cfg.decode.short_side)
        out["decode"] = {"frame_hw": list(hw), "decoded_hw": list(decoded),
                         "resize": "enlarge (bilinear)" if decoded[0] >= hw[0] else "shrink (area)"}
        idt = idt_params(cfg.idt)  # what the IDT stage runs with
        frame_hw = resized_shape(*hw, None, idt.max_side)
        out["idt"] = {"frame_hw": list(frame_hw),
                      "scales": [[round(f, 6), h, w] for f, (h, w) in pyramid_scales(*frame_hw, idt)]}
    else:
        videos = train = KINETICS_VIDEOS
    out["fit_codebook"] = codebook_choices(cfg.idt.sample_videos * cfg.idt.sample_rows, cfg.codebook)
    out["encode"] = encode_choices(cfg.codebook)
    out["cluster"] = {"videos": videos, "k": cfg.cluster.k, "d": cfg.codebook.sketch_dim,
                      "backend": cfg.cluster.backend, **kmeans_choices(videos, cfg.cluster.k, cfg.codebook.sketch_dim)}
    for stage in TRAINING_STAGES:
        out[stage] = training_choices(train, cfg.pretrain, getattr(cfg, stage), cfg.codebook.sketch_dim)
    return out


def trace_all() -> dict:
    """``trace`` of every bundled config, as stored in ``data/decisions.json``."""
    return json.loads(json.dumps({name: trace(name) for name in CONFIGS}))  # tuples as lists, as read back


def write() -> Path:
    """Pin the trace of every bundled config in ``data/decisions.json``."""
    text = json.dumps(trace_all(), indent=1, sort_keys=True)
    # lists of numbers on one line: [128, 171] rather than four lines
    text = re.sub(r"\[\s+([-\w.\s,]*?)\s+\]", lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
                  text)
    DECISIONS_FILE.parent.mkdir(parents=True, exist_ok=True)
    DECISIONS_FILE.write_text(text + "\n", encoding="utf-8")
    return DECISIONS_FILE


def load() -> dict:
    """The pinned trace."""
    return json.loads(DECISIONS_FILE.read_text(encoding="utf-8"))


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": [{"c": 1}]}}`` -> ``{"a.b.0.c": 1}``; lists of plain values are leaves."""
    if isinstance(tree, list) and any(isinstance(v, (dict, list)) for v in tree):
        tree = {str(i): v for i, v in enumerate(tree)}
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, object] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def differences(pinned: dict, now: dict) -> list[str]:
    """One line per choice that differs between two traces, naming the versioned stages it belongs to."""
    a, b = flatten(pinned), flatten(now)
    lines = []
    for path in sorted(set(a) | set(b)):
        if a.get(path, "(absent)") != b.get(path, "(absent)"):
            config, section = path.split(".")[:2]
            lines.append(f"{path}: pinned {a.get(path, '(absent)')}, now {b.get(path, '(absent)')} "
                         f"(stage {', '.join(stages_of(section))})")
    return lines


if __name__ == "__main__":
    if sys.argv[1:] != ["write"]:
        print(f"usage: python {Path(__file__).name} write", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {write()}")
