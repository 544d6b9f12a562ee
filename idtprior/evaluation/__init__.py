"""Evaluation cores: finetuning, frozen-feature probes (linear, few-shot, kNN), cluster scores, the paired McNemar
test, and figures (cluster montages, training curves, PNG data URIs for Prefect artifacts).

Pure functions over clip sources, arrays and torch models: no Prefect, Dask or workspace here (``tasks/`` wraps them).
"""

from idtprior.evaluation.clips import eval_clips
from idtprior.evaluation.figures import (
    cluster_montage,
    decode_png,
    draw_tracks,
    encode_png,
    largest_clusters,
    line_plot,
    markdown_image,
    middle_frame,
    montage,
    png_data_uri,
    training_curves,
)
from idtprior.evaluation.finetune import FinetuneParams, FinetuneResult, Plateau, finetune, split_validation
from idtprior.evaluation.metrics import McNemar, cluster_purity, contingency, mcnemar_exact, nmi
from idtprior.evaluation.probe import (
    extract_features,
    few_shot_indices,
    few_shot_table,
    kmeans_agreement,
    knn_probe,
    linear_probe,
)

__all__ = [
    "FinetuneParams", "FinetuneResult", "McNemar", "Plateau", "cluster_montage", "cluster_purity", "contingency",
    "decode_png", "draw_tracks", "encode_png", "eval_clips", "extract_features", "few_shot_indices", "few_shot_table",
    "finetune", "kmeans_agreement", "knn_probe", "largest_clusters", "line_plot", "linear_probe", "markdown_image",
    "mcnemar_exact", "middle_frame", "montage", "nmi", "png_data_uri", "split_validation", "training_curves",
]
