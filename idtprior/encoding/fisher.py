"""Improved Fisher vectors (Perronnin, Sanchez, Mensink 2010; the paper's equations (5)-(6)).

For descriptors x_1..x_N in a block's PCA space (dimension D) and a diagonal GMM (w_k, mu_k, sigma_k^2), with posteriors
gamma_ik (computed by log-sum-exp):

    G_mu_k    = 1 / (N sqrt(w_k))   * sum_i gamma_ik (x_i - mu_k) / sigma_k
    G_sigma_k = 1 / (N sqrt(2 w_k)) * sum_i gamma_ik [(x_i - mu_k)^2 / sigma_k^2 - 1]

The block's vector is ``[G_mu_1 .. G_mu_K, G_sigma_1 .. G_sigma_K]`` (2KD values, component-major), then power-normalised
(sign(z) |z|^alpha, alpha = 0.5) and L2-normalised. With several blocks (``per_type``) the unit vectors of the blocks are
concatenated and divided by sqrt(#blocks), so the result has unit norm too.

Both sums come from the statistics ``gamma^T [x, x^2]`` of :mod:`idtprior.encoding.gmm` (chunked matrix products on rows
centred on a reference point; posteriors in float32, or float64 for ill-conditioned components; statistics in float64):
sum gamma (x - mu)^2 = S2 - 2 mu S1 + mu^2 S0.
"""

from typing import Any

import numpy as np

from idtprior.encoding.backend import get_array_module
from idtprior.encoding.codebook import Codebook, CodebookBlock, check_descriptors, project
from idtprior.encoding.gmm import DiagGMM, chunk_stats, estep_params, uncentre


def fisher_statistics(z: Any, gmm: DiagGMM, chunk_rows: int = 8192) -> tuple[Any, Any]:
    """Un-normalised Fisher vector gradients of descriptors already in the GMM's space.

    Args:
        z: (N, D) float array, N >= 1.
        gmm: K-component diagonal GMM of dimension D.
    Returns:
        G_mu (K, D) float64 and G_sigma (K, D) float64 (the formulas in the module docstring).
    """
    xp = get_array_module(z)
    n, d = z.shape
    est = estep_params(gmm, xp)
    k = gmm.n_components
    s0 = xp.zeros(k, dtype=xp.float64)
    s12 = xp.zeros((k, 2 * d), dtype=xp.float64)
    for start in range(0, n, chunk_rows):
        a, b, _ = chunk_stats(xp.asarray(z[start:start + chunk_rows], dtype=xp.float32), est, xp)
        s0 += a
        s12 += b
    return _gradients(s0, *uncentre(s0, s12, est, xp), n, gmm, xp)


def _gradients(s0: Any, s1: Any, s2: Any, n: int, gmm: DiagGMM, xp: Any) -> tuple[Any, Any]:
    w = xp.asarray(gmm.weights, dtype=xp.float64)[:, None]  # (K, 1)
    mu = xp.asarray(gmm.means, dtype=xp.float64)  # (K, D)
    var = xp.asarray(gmm.variances, dtype=xp.float64)  # (K, D)
    s0 = s0[:, None]
    g_mu = (s1 - mu * s0) / (n * xp.sqrt(w) * xp.sqrt(var))
    g_sigma = (s2 - 2.0 * mu * s1 + (mu * mu - var) * s0) / (n * xp.sqrt(2.0 * w) * var)
    return g_mu, g_sigma


def normalize_fisher(g_mu: Any, g_sigma: Any, alpha: float = 0.5) -> Any:
    """``[G_mu.ravel(), G_sigma.ravel()]`` (2KD,) with power (alpha) and L2 normalisation; float64, zeros stay zeros."""
    xp = get_array_module(g_mu)
    v = xp.concatenate([g_mu.ravel(), g_sigma.ravel()])
    v = xp.sign(v) * xp.abs(v) ** alpha
    norm = float(xp.linalg.norm(v))
    return v / norm if norm > 0 else v


def fisher_vector(descriptors: Any, codebook: Codebook, *, alpha: float = 0.5,
                  chunk_rows: int = 8192) -> tuple[Any, bool]:
    """The improved Fisher vector of one video.

    Args:
        descriptors: (N, 426) float array (IDT rows' columns 10:436), NumPy or CuPy; N may be 0.
        codebook: PCA + GMM per block.
        alpha: power-normalisation exponent in (0, 1].
        chunk_rows: rows per posterior chunk (memory: about chunk_rows * (K + 2D) * 4 bytes).
    Returns:
        (fv, valid): fv (codebook.fv_dim,) float32 = sum over blocks of 2 K D_b, unit L2 norm; valid is False (and fv all
        zeros) when there are no descriptors.
    """
    check_descriptors(descriptors, "descriptors", codebook.input_dim)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha: must be in (0, 1], got {alpha!r}")
    xp = get_array_module(descriptors)
    n = descriptors.shape[0]
    if n == 0:
        return xp.zeros(codebook.fv_dim, dtype=xp.float32), False
    finite = xp.isfinite(descriptors).all(axis=1)
    if not bool(finite.all()):
        raise ValueError(f"descriptors: {int((~finite).sum())} of {n} rows have non-finite values")
    parts = []
    for block in codebook.blocks:
        parts.append(normalize_fisher(*_block_statistics(descriptors, block, chunk_rows, xp), alpha=alpha))
    fv = parts[0] if len(parts) == 1 else xp.concatenate(parts) / np.sqrt(len(parts))
    fv = fv.astype(xp.float32)
    if fv.shape != (codebook.fv_dim,):  # internal invariant, not user input
        raise RuntimeError(f"fisher_vector: produced {fv.shape}, expected ({codebook.fv_dim},)")
    return fv, True


def _block_statistics(descriptors: Any, block: CodebookBlock, chunk_rows: int, xp: Any) -> tuple[Any, Any]:
    """Project chunk by chunk (no (N, D) copy of the whole video) and accumulate the FV statistics of one block."""
    n = descriptors.shape[0]
    d = block.dim
    est = estep_params(block.gmm, xp)
    k = block.gmm.n_components
    s0 = xp.zeros(k, dtype=xp.float64)
    s12 = xp.zeros((k, 2 * d), dtype=xp.float64)
    for start in range(0, n, chunk_rows):
        z = project(descriptors[start:start + chunk_rows], block)  # (b, D) float32
        a, b, _ = chunk_stats(z, est, xp)
        s0 += a
        s12 += b
    return _gradients(s0, *uncentre(s0, s12, est, xp), n, block.gmm, xp)
