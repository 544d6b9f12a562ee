"""Encoding cores: codebook fitting (PCA + diagonal GMM), Fisher vectors, count sketch and K-means.

Pure functions on arrays (NumPy on the CPU, CuPy on a GPU through :func:`get_array_module`); no Prefect, no workspace.
"""

from idtprior.encoding.backend import cupy_available, get_array_module, to_numpy
from idtprior.encoding.codebook import (
    DESCRIPTOR_DIM,
    DESCRIPTOR_TYPES,
    IDT_ROW_DIM,
    PCA_MODES,
    Codebook,
    CodebookBlock,
    CodebookParams,
    fit_codebook,
    fit_pca,
    project,
)
from idtprior.encoding.fisher import fisher_statistics, fisher_vector, normalize_fisher
from idtprior.encoding.gmm import DiagGMM, GMMFit, em_step, fit_gmm, gmm_log_likelihood, sufficient_statistics
from idtprior.encoding.kmeans import faiss_available, kmeans, kmeans_plusplus
from idtprior.encoding.sketch import CountSketch, count_sketch

__all__ = [
    "DESCRIPTOR_DIM",
    "DESCRIPTOR_TYPES",
    "IDT_ROW_DIM",
    "PCA_MODES",
    "Codebook",
    "CodebookBlock",
    "CodebookParams",
    "CountSketch",
    "DiagGMM",
    "GMMFit",
    "count_sketch",
    "cupy_available",
    "em_step",
    "faiss_available",
    "fisher_statistics",
    "fisher_vector",
    "fit_codebook",
    "fit_gmm",
    "fit_pca",
    "get_array_module",
    "gmm_log_likelihood",
    "kmeans",
    "kmeans_plusplus",
    "normalize_fisher",
    "project",
    "sufficient_statistics",
    "to_numpy",
]
