"""Diagonal Gaussian mixtures: a chunked float32 EM that fits millions of rows in a few GB, and the shared E-step.

The E-step writes the log-density of every component as one matrix product of rows centred on a reference point r (the
weighted mean of the means): with ``x' = x - r``, ``mu' = mu - r`` and ``xx = [x', x'*x']`` (n, 2D),

    log w_k + log N(x | mu_k, var_k) = xx @ W[:, k] + c_k,   W = [mu'/var ; -1/(2 var)]^T  (2D, K),
    c_k = log w_k - 1/2 sum_d (log(2 pi var_kd) + mu'_kd^2 / var_kd),

and the sufficient statistics of the M-step (and of the Fisher vector) are ``gamma^T @ xx`` (K, 2D), un-centred in
float64 at the end (the float32 product below takes the plain rows). The expansion's terms are ~ (x' / sigma)^2 while
their sum, for the rows a component explains, is ~ ((x - mu) / sigma)^2: in float32 that cancellation costs ~6e-8 * q
nats, q = sum_d mu'_kd^2 / var_kd. Centring keeps q small for components near the bulk; a component with
q > ``ILL_CONDITIONED_Q`` (a tight one far from r: variances are floored at 1e-4 of the data's, so q reaches 1e4-1e7)
gets its log-densities in float64 from the exact float64 x'. Against a float64 textbook Fisher vector, overlapping
components (posteriors ~0.5) at |mu|/sigma = 10, 30, 100 per dimension were off by up to 2.1e-4, 6.4e-4, 3.6e-2
(D = 32) with uncentred float32 logits; now < 1e-6 (centred float32) and < 1e-7 (float64 path;
tests/encoding/test_encoding_fisher.py). The posteriors are float32. Rows are processed in chunks so memory is the data
plus O(chunk_rows * K) floats; no (n, K) matrix is ever kept.

Precision of ``gamma^T @ xx`` (``precision``): ``"float64"`` runs the product in float64 (Fisher vectors: a video's few
thousand rows are later centred on the component means, S2 - 2 mu S1 + mu^2 S0, which cancels for tight components);
``"float32"`` runs it in float32 per chunk and accumulates the chunks in float64 (EM: ~2-3x faster per iteration; each
chunk's sum carries a ~1e-7 relative rounding error that averages out over the hundreds of chunks of a codebook sample,
and the M-step's variances are floored anyway).
"""

import time
from dataclasses import dataclass, field
from types import ModuleType
from collections.abc import Callable
from typing import Any

import numpy as np

from idtprior.encoding.backend import get_array_module, to_numpy

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class DiagGMM:
    """A diagonal-covariance Gaussian mixture.

    Attributes:
        weights: (K,) float32, positive, sums to 1.
        means: (K, D) float32.
        variances: (K, D) float32, positive (diagonal covariances, not standard deviations).
    """

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray

    def __post_init__(self) -> None:
        k, d = np.shape(self.means)
        if np.shape(self.weights) != (k,) or np.shape(self.variances) != (k, d):
            raise ValueError(
                f"DiagGMM: shapes weights {np.shape(self.weights)}, means {np.shape(self.means)}, "
                f"variances {np.shape(self.variances)} do not agree (expected (K,), (K, D), (K, D))"
            )

    @property
    def n_components(self) -> int:
        return int(np.shape(self.means)[0])

    @property
    def dim(self) -> int:
        return int(np.shape(self.means)[1])

    def to_sklearn(self):
        """The same mixture as a fitted scikit-learn ``GaussianMixture`` (float64), for its API (score, predict_proba,
        sample) and for comparisons."""
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(n_components=self.n_components, covariance_type="diag")
        gm.weights_ = np.asarray(self.weights, np.float64)
        gm.means_ = np.asarray(self.means, np.float64)
        gm.covariances_ = np.asarray(self.variances, np.float64)
        gm.precisions_cholesky_ = 1.0 / np.sqrt(gm.covariances_)
        return gm


@dataclass
class GMMFit:
    """The result of :func:`fit_gmm`: the mixture and how EM went.

    Attributes:
        gmm: the fitted mixture.
        log_likelihood: mean log-likelihood per row after each EM iteration (E-step of that iteration).
        converged: whether the change of the mean log-likelihood fell below ``tol``.
        reseeded: components re-seeded because they lost all their mass.
        seconds: wall-clock seconds of each EM iteration (E-step + M-step), for benchmarks and logs.
    """

    gmm: DiagGMM
    log_likelihood: list[float] = field(default_factory=list)
    converged: bool = False
    reseeded: int = 0
    seconds: list[float] = field(default_factory=list)

    @property
    def n_iter(self) -> int:
        return len(self.log_likelihood)


# A component whose squared Mahalanobis distance q from the reference point exceeds this gets its log-densities in
# float64: float32 rounding of the expanded quadratic form costs ~6e-8 * q nats (<= ~1e-4 here), which moves the
# posteriors of overlapping components by as much. Measured worst case below it (overlapping pair, D = 200, q = 1150):
# Fisher vector max error 1.2e-4; D <= 48: 2.4e-5. Typical codebook components (q of a few times D) stay in float32.
# Measured against the uncentred float32 E-step (2 shared cores): the encode_speed synthetic codebooks have none above
# 1500 (Fisher vector D = 200 and 48, EM 48-d: 0.97-1.13x); at 1000, 58% of the D = 200 one is above (1.2-1.35x);
# with every component in float64, 1.5-1.6x.
ILL_CONDITIONED_Q = 1500.0


@dataclass(frozen=True)
class EStep:
    """The E-step of a mixture in the centred linear form (see the module docstring), ready for chunk after chunk.

    The components are reordered so that the G well-conditioned ones come first and the B ill-conditioned ones last
    (``order``); the statistics of a chunk are put back in the mixture's order before they are returned.

    Attributes:
        ref: (D,) float32 reference point (the weighted mean of the means); every chunk is centred on it.
        W: (2D, G) float32 ``[mu'/var ; -1/(2 var)]^T`` of the well-conditioned components, ``mu' = mu - ref``.
        c: (G,) float32 their constants minus ``offset``.
        W1, W2: (D, B) float64 ``mu'/var`` and ``-1/(2 var)`` of the ill-conditioned components; c64: (B,) float64.
        offset: float64 constant common to every component (keeps the float32 constants small), added back to log p.
        order: (K,) int, well-conditioned then ill-conditioned component indices (NumPy); None when B = 0.
        inverse: (K,) int, the inverse permutation of ``order`` (an xp array); None when B = 0.
    """

    ref: Any
    W: Any
    c: Any
    W1: Any
    W2: Any
    c64: Any
    offset: float
    order: np.ndarray | None
    inverse: Any

    @property
    def n_ill(self) -> int:
        return int(self.W1.shape[1])


def estep_params(gmm: DiagGMM, xp: ModuleType) -> EStep:
    """The centred linear form of the log joint densities of ``gmm`` (float64 arithmetic, float32 where safe)."""
    w = np.asarray(to_numpy(gmm.weights), dtype=np.float64)
    mu = np.asarray(to_numpy(gmm.means), dtype=np.float64)
    var = np.asarray(to_numpy(gmm.variances), dtype=np.float64)
    # The expanded quadratic form's terms are ~ ((x - ref) / sigma)^2 and cancel to ~((x - mu) / sigma)^2: centring on
    # the means' mean keeps them small for every component near the bulk. A float32 ref makes float32 x - ref exact
    # in float64 (for magnitudes within 2^29 of each other), which the ill-conditioned components' path relies on.
    ref = ((w / w.sum())[:, None] * mu).sum(0).astype(np.float32)  # (D,)
    mu_c = mu - ref.astype(np.float64)  # (K, D)
    prec = 1.0 / var
    q = (mu_c * mu_c * prec).sum(1)  # (K,) squared Mahalanobis distance of each mean from ref
    with np.errstate(divide="ignore"):  # a zero weight: log 0 = -inf, no posterior mass
        c = np.log(w) - 0.5 * (np.log(var).sum(1) + mu.shape[1] * _LOG_2PI + q)  # (K,)
    ill = q > ILL_CONDITIONED_Q
    good, bad = np.nonzero(~ill)[0], np.nonzero(ill)[0]
    # a common offset: the posteriors do not see it, and the float32 constants round less near 0 (~6e-8 * |c| nats;
    # a log-determinant differs by 0.5 * D * log(1e4) = 74 nats at D = 16 between a broad and a floored component)
    finite = c[good][np.isfinite(c[good])]  # a zero weight gives -inf
    offset = float(np.median(finite)) if finite.size else 0.0
    W = np.concatenate([mu_c[good] * prec[good], -0.5 * prec[good]], axis=1).T  # (2D, G)
    order = np.concatenate([good, bad]) if bad.size else None
    return EStep(
        ref=xp.asarray(ref),
        W=xp.asarray(W, dtype=xp.float32),
        c=xp.asarray(c[good] - offset, dtype=xp.float32),
        W1=xp.asarray((mu_c[bad] * prec[bad]).T.copy()),
        W2=xp.asarray((-0.5 * prec[bad]).T.copy()),
        c64=xp.asarray(c[bad] - offset),
        offset=offset,
        order=order,
        inverse=None if order is None else xp.asarray(np.argsort(order)),
    )


def _posteriors(xx: Any, est: EStep, xp: ModuleType, x64: Any = None, x64sq: Any = None) -> tuple[Any, Any]:
    """Responsibilities of one chunk by a log-sum-exp.

    Args:
        xx: (n, 2D) float32 ``[x', x'^2]`` of the chunk centred on ``est.ref``.
        x64, x64sq: (n, D) float64 ``x'`` (exact: float32 x minus float32 ref) and ``x'^2``; needed when
            ``est.n_ill > 0`` (the float32 ``x'`` itself is rounded by ~eps * |x'|, i.e. ~eps * sqrt(q) sigma).
    Returns:
        gamma (n, K) float32 rows summing to 1, components in ``est.order``; log p(x) (n,) float32.
    """
    g = est.W.shape[1]
    if not est.n_ill:
        logp = xx @ est.W  # (n, K)
        logp += est.c
        m = logp.max(axis=1, keepdims=True)  # (n, 1)
        logp -= m
    else:
        lb = x64 @ est.W1  # (n, B) float64
        lb += x64sq @ est.W2
        lb += est.c64
        logp = xp.empty((xx.shape[0], g + est.n_ill), dtype=xp.float32)  # (n, K)
        if g:
            logp[:, :g] = xx @ est.W
            logp[:, :g] += est.c
            m = xp.maximum(logp[:, :g].max(axis=1, keepdims=True), lb.max(axis=1, keepdims=True).astype(xp.float32))
        else:
            m = lb.max(axis=1, keepdims=True).astype(xp.float32)
        # one float32 shift for both parts: the float64 log-densities are rounded only after it, near 0
        logp[:, :g] -= m
        lb -= m.astype(xp.float64)
        logp[:, g:] = lb
    xp.exp(logp, out=logp)
    s = logp.sum(axis=1, keepdims=True)  # (n, 1)
    logp /= s
    loglik = (m.astype(xp.float64) + xp.log(s.astype(xp.float64)) + est.offset)[:, 0]
    return logp, loglik.astype(xp.float32)


PRECISIONS = ("float32", "float64")


def chunk_stats(x: Any, est: EStep, xp: ModuleType, precision: str = "float64") -> tuple[Any, Any, Any]:
    """Sufficient statistics of one chunk.

    Args:
        x: (n, D) float32.
        est: the mixture's E-step (:func:`estep_params`).
        precision: dtype of the ``gamma^T [x', x'^2]`` product (see the module docstring).
    Returns:
        s0 (K,) float64 = sum_i gamma_ik; s12 (K, 2D) float64 = [sum_i gamma_ik x'_i, sum_i gamma_ik x'_i^2] of the
        CENTRED rows x' = x - est.ref (:func:`uncentre` gives the plain sums); loglik (n,) float32 = log p(x_i).
    """
    xc = x - est.ref  # (n, D) float32
    xx = xp.concatenate([xc, xc * xc], axis=1)  # (n, 2D)
    x64 = x64sq = None
    if precision == "float64" or est.n_ill:
        x64 = x.astype(xp.float64) - est.ref.astype(xp.float64)  # (n, D), exact
        x64sq = x64 * x64
    gamma, loglik = _posteriors(xx, est, xp, x64, x64sq)
    s0 = gamma.sum(axis=0, dtype=xp.float64)  # (K,)
    if precision == "float32":
        # float32 product of the plain rows, float64 across chunks: from the centred rows it would be ~3x less precise
        # in S1 and S2 (x' itself is rounded); re-centred in float64 here, un-centred exactly by uncentre
        # two (K, n) @ (n, D) products, as below: one against the (n, 2D) concatenation is ~2x slower (OpenBLAS; the
        # concatenation is a copy, and the product runs a slower kernel)
        s12 = xp.concatenate([gamma.T @ x, gamma.T @ (x * x)], axis=1).astype(xp.float64)  # (K, 2D)
        s12 = _recentre(s0, s12, est, xp)
    else:
        # float64 product: the gradients and the M-step subtract mu * S1 and mu^2 * S0 from these sums, which cancels
        # badly in float32 for tight components (|mu| / sigma ~ 10s, common for near-duplicate IDT descriptors).
        g64 = gamma.astype(xp.float64)  # (n, K) C-order: BLAS reads it transposed without a copy
        # two (K, n) @ (n, D) products run ~2x faster than one against the (n, 2D) concatenation (measured, OpenBLAS)
        s12 = xp.concatenate([g64.T @ x64, g64.T @ x64sq], axis=1)  # (K, 2D)
    if est.inverse is not None:  # back to the mixture's component order
        s0, s12 = s0[est.inverse], s12[est.inverse]
    return s0, s12, loglik


def _recentre(s0: Any, s12: Any, est: EStep, xp: ModuleType) -> Any:
    """Centred sums (K, 2D) float64 [sum gamma x', sum gamma x'^2] from the plain ones (the inverse of uncentre)."""
    d = s12.shape[1] // 2
    r = xp.asarray(est.ref, dtype=xp.float64)[None, :]  # (1, D)
    s1, s2 = s12[:, :d], s12[:, d:]
    s1c = s1 - r * s0[:, None]
    return xp.concatenate([s1c, s2 - 2.0 * r * s1c - r * r * s0[:, None]], axis=1)


def uncentre(s0: Any, s12: Any, est: EStep, xp: ModuleType) -> tuple[Any, Any]:
    """Plain sums (K, D) float64 [sum gamma x, sum gamma x^2] from the centred ones of :func:`chunk_stats`."""
    d = s12.shape[1] // 2
    r = xp.asarray(est.ref, dtype=xp.float64)[None, :]  # (1, D)
    s1c, s2c = s12[:, :d], s12[:, d:]
    s1 = s1c + r * s0[:, None]
    return s1, s2c + 2.0 * r * s1c + r * r * s0[:, None]


def sufficient_statistics(x: Any, gmm: DiagGMM, chunk_rows: int = 4096,
                          precision: str = "float64") -> tuple[Any, Any, Any, Any]:
    """Zeroth, first and second order statistics of ``x`` under ``gmm``, computed chunk by chunk.

    Args:
        x: (n, D) array (NumPy or CuPy), converted to float32 one chunk at a time.
        gmm: a mixture of dimension D.
        chunk_rows: rows per chunk; peak extra memory is about ``chunk_rows * (K + 2D) * 4`` bytes.
        precision: ``"float64"`` or ``"float32"``, the dtype of the per-chunk ``gamma^T [x, x^2]`` product (the chunks
            are summed in float64 either way; see the module docstring).
    Returns:
        s0 (K,) float64, s1 (K, D) float64, s2 (K, D) float64, and log p(x_i) (n,) float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {PRECISIONS}, got {precision!r}")
    xp = get_array_module(x)
    n, d = x.shape
    est = estep_params(gmm, xp)
    k = gmm.n_components
    s0 = xp.zeros(k, dtype=xp.float64)
    s12 = xp.zeros((k, 2 * d), dtype=xp.float64)
    loglik = xp.empty(n, dtype=xp.float32)
    for start in range(0, n, chunk_rows):
        xc = xp.asarray(x[start:start + chunk_rows], dtype=xp.float32)
        a, b, ll = chunk_stats(xc, est, xp, precision)
        s0 += a
        s12 += b
        loglik[start:start + chunk_rows] = ll
    s1, s2 = uncentre(s0, s12, est, xp)
    return s0, s1, s2, loglik


def gmm_log_likelihood(x: Any, gmm: DiagGMM, chunk_rows: int = 4096) -> float:
    """Mean log-likelihood per row of ``x`` (n, D) under ``gmm``: the same quantity as sklearn's ``GaussianMixture.score``."""
    _check_rows(x, "x", gmm.dim)
    return float(sufficient_statistics(x, gmm, chunk_rows)[3].astype(np.float64).mean())


def _check_rows(x: Any, name: str, dim: int | None = None) -> None:
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, D), got shape {getattr(x, 'shape', type(x).__name__)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: {x.shape[1]} columns, the mixture has dimension {dim}")


def init_sample_rows(n: int, k: int, init_sample: int) -> int:
    """Rows of the seeded sample :func:`fit_gmm` initialises ``k`` components from: ``init_sample``, at least k, at
    most n."""
    return min(n, max(init_sample, k))


def fit_gmm(
    x: Any,
    n_components: int,
    *,
    iters: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    init: str = "kmeans",
    init_sample: int = 100_000,
    init_iters: int = 10,
    variance_floor: float = 1e-4,
    chunk_rows: int = 4096,
    precision: str = "float32",
    on_iteration: Callable[[int, float, float], None] | None = None,
) -> GMMFit:
    """Fit a diagonal GMM by EM in float32, chunk by chunk (memory: the data plus O(chunk_rows * K)).

    Args:
        x: (n, D) float array (NumPy or CuPy); n >= n_components.
        n_components: K.
        iters: at most this many EM iterations (0 returns the initialisation).
        tol: stop when the mean log-likelihood per row changes by less than this (sklearn's criterion and default).
        seed: seeds the initialisation and re-seeding of dead components.
        init: ``"kmeans"`` (k-means++ seeding then ``init_iters`` Lloyd iterations on a sample, like sklearn's default),
            ``"kmeans++"`` (k-means++ seeding only) or ``"random"`` (K distinct random rows as means).
        init_sample: rows drawn (seeded) for the initialisation.
        variance_floor: every variance is at least this fraction of the data's variance in that dimension.
        chunk_rows: rows per E-step chunk.
        precision: ``"float32"`` (default) or ``"float64"``: dtype of the per-chunk statistics product; chunks are summed
            in float64 either way (see the module docstring).
        on_iteration: called after each EM iteration with (iteration, from 1; the mean log-likelihood per row; its
            seconds): a caller's progress report (the fit_codebook stage logs it).
    Returns:
        A :class:`GMMFit`; the weights, means and variances are float32 of the input's array module.
    """
    from idtprior.encoding.kmeans import kmeans, kmeans_plusplus

    _check_rows(x, "x")
    n, d = x.shape
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components: must be a positive integer, got {n_components!r}")
    if n < n_components:
        raise ValueError(f"x: {n} rows, need at least n_components={n_components}")
    if init not in ("kmeans", "kmeans++", "random"):
        raise ValueError(f"init: must be 'kmeans', 'kmeans++' or 'random', got {init!r}")
    if not isinstance(iters, (int, np.integer)) or iters < 0:
        raise ValueError(f"iters: must be a non-negative integer (0: initialisation only), got {iters!r}")
    if not variance_floor > 0:
        raise ValueError(f"variance_floor: must be > 0, got {variance_floor}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {PRECISIONS}, got {precision!r}")
    xp = get_array_module(x)
    k = int(n_components)
    rng = np.random.default_rng(seed)

    # Data moments in float64, chunk by chunk (no float64 copy of x).
    s1 = xp.zeros(d, dtype=xp.float64)
    s2 = xp.zeros(d, dtype=xp.float64)
    for start in range(0, n, chunk_rows):
        xc = xp.asarray(x[start:start + chunk_rows], dtype=xp.float64)
        if not bool(xp.isfinite(xc).all()):
            bad = int(start + int(xp.nonzero(~xp.isfinite(xc).all(axis=1))[0][0]))
            raise ValueError(f"x: row {bad} has a non-finite value")
        s1 += xc.sum(0)
        s2 += (xc * xc).sum(0)
    data_mean = s1 / n
    data_var = xp.maximum(s2 / n - data_mean**2, 0.0)
    floor = variance_floor * xp.maximum(data_var, 1e-12)  # (D,)

    # Initialisation on a seeded sample.
    m = init_sample_rows(n, k, init_sample)
    idx = np.sort(rng.choice(n, size=m, replace=False))
    xs = xp.asarray(x[xp.asarray(idx) if xp is not np else idx], dtype=xp.float32)  # (m, D)
    if init == "random":
        means = xs[xp.asarray(rng.choice(m, size=k, replace=False))]
    elif init == "kmeans++":
        means = kmeans_plusplus(xs, k, seed=int(rng.integers(2**31)))
    else:
        _, cents = kmeans(xs, k, runs=1, seed=int(rng.integers(2**31)), iters=init_iters,
                          backend="numpy" if xp is np else "cupy")
        means = cents[0]
    # Initial variances and weights from the hard assignment of the sample to the initial means.
    from idtprior.encoding.kmeans import assign_nearest

    lab, _ = assign_nearest(xs, means.astype(xp.float32), xp, chunk_rows=chunk_rows)
    cnt = xp.bincount(lab, minlength=k).astype(xp.float64)
    sp_sum = xp.zeros((k, d), dtype=xp.float64)
    sp_sq = xp.zeros((k, d), dtype=xp.float64)
    for j in range(d):  # d bincounts of length m: cheap, and exact in float64
        col = xs[:, j].astype(xp.float64)
        sp_sum[:, j] = xp.bincount(lab, weights=col, minlength=k)
        sp_sq[:, j] = xp.bincount(lab, weights=col * col, minlength=k)
    safe = xp.maximum(cnt, 1.0)[:, None]
    var0 = sp_sq / safe - (sp_sum / safe) ** 2
    var0 = xp.where(cnt[:, None] >= 2, var0, data_var[None, :])
    gmm = DiagGMM(
        weights=((cnt + 1.0) / (cnt.sum() + k)).astype(xp.float32),
        means=xp.asarray(means, dtype=xp.float32),
        variances=xp.maximum(var0, floor).astype(xp.float32),
    )

    fit = GMMFit(gmm=gmm)
    prev = -np.inf
    for _ in range(iters):
        t0 = time.perf_counter()
        gmm, ll, dead = em_step(x, gmm, floor, data_var, chunk_rows, precision)
        fit.log_likelihood.append(ll)
        fit.reseeded += dead
        fit.gmm = gmm
        fit.seconds.append(time.perf_counter() - t0)
        if on_iteration is not None:
            on_iteration(len(fit.log_likelihood), ll, fit.seconds[-1])
        if abs(ll - prev) < tol and not dead:
            fit.converged = True
            break
        prev = ll
    return fit


def em_step(x: Any, gmm: DiagGMM, floor: Any, data_var: Any, chunk_rows: int = 4096,
            precision: str = "float32") -> tuple[DiagGMM, float, int]:
    """One EM iteration: chunked E-step statistics, then the M-step (float64 on K x D only).

    Args:
        x: (n, D) float array; gmm: the current mixture (arrays of x's module).
        floor: (D,) variance floor; data_var: (D,) variance of x (given to re-seeded components).
        precision: dtype of the statistics product (see :func:`sufficient_statistics`).
    Returns:
        the updated mixture (float32), the mean log-likelihood per row under ``gmm`` (before the update), and how many
        components without mass were re-seeded on the worst-explained rows.
    """
    xp = get_array_module(x)
    n, k = x.shape[0], gmm.n_components
    s0, sx, sxx, loglik = sufficient_statistics(x, gmm, chunk_rows, precision)
    ll = float(loglik.astype(xp.float64).mean())
    dead = to_numpy(s0 < 1e-6 * n / k).nonzero()[0]
    nk = xp.maximum(s0, 1e-12)[:, None]
    mu = sx / nk
    var = xp.maximum(sxx / nk - mu * mu, floor)
    w = s0 / s0.sum()
    if dead.size:
        # A component without mass: move it onto the worst-explained rows, with the data's variance.
        worst = to_numpy(xp.argsort(loglik)[: dead.size])
        rows = xp.asarray(x[worst if xp is np else xp.asarray(worst)], dtype=xp.float64)
        mu[xp.asarray(dead)] = rows
        var[xp.asarray(dead)] = data_var[None, :] + floor
        w[xp.asarray(dead)] = 1.0 / n
        w = w / w.sum()
    new = DiagGMM(weights=w.astype(xp.float32), means=mu.astype(xp.float32), variances=var.astype(xp.float32))
    return new, ll, int(dead.size)
