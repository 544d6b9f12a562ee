"""The codebook: PCA then a diagonal GMM fitted on a sample of IDT descriptors, plus the count-sketch seed.

IDT rows are (N, 436); columns 10:436 are the descriptors this module works on, (N, 426), in the order of
:data:`DESCRIPTOR_TYPES` (trajectory 30, HOG 96, HOF 108, MBHx 96, MBHy 96).

Two PCA modes:
- ``concat`` (default; the paper's "feature importance 90%" and the authors' code): one PCA on the 426-d concatenation,
  keeping the fewest components that explain ``pca_variance`` of the variance, one GMM on top. One block.
- ``per_type`` (Wang et al. IJCV 2016): each descriptor type reduced to half its dimensions (15, 48, 54, 48, 48), one GMM
  per type. Five blocks; ``pca_variance`` is not used.
"""

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from idtprior.encoding.backend import get_array_module, to_numpy
from idtprior.encoding.gmm import DiagGMM, fit_gmm
from idtprior.encoding.sketch import CountSketch

DESCRIPTOR_TYPES: tuple[tuple[str, int], ...] = (("traj", 30), ("hog", 96), ("hof", 108), ("mbhx", 96), ("mbhy", 96))
"""Descriptor types of an IDT row, in column order, with their dimensions."""
DESCRIPTOR_DIM = sum(d for _, d in DESCRIPTOR_TYPES)  # 426
IDT_ROW_DIM = 436
"""Width of a full IDT row; its columns 10:436 are the descriptors."""
PCA_MODES = ("concat", "per_type")
_FORMAT_VERSION = 1

PAPER_SAMPLE_ROWS = 1_750_000
"""The paper's codebook sample: 3500 videos x 500 descriptors, for 256 components (~6,800 rows per component)."""
PAPER_COMPONENTS = 256
MIN_ROWS_PER_COMPONENT = 100
"""Fewer sample rows per GMM component than this gives a ``SmallSampleWarning``: each component then rests on a few
dozen points for its 2D + 1 parameters (the demo fits 64 components on ~30,000 rows: ~470 per component)."""


class SmallSampleWarning(UserWarning):
    """A codebook fitted on too few sample rows for its GMM components: it works, but the components are poorly
    estimated. A warning, not an error: tests and demos fit tiny samples on purpose."""


def check_sample_size(n_rows: int, n_components: int) -> str:
    """Warn (``SmallSampleWarning``) when ``n_rows`` are under ``MIN_ROWS_PER_COMPONENT`` per GMM component; returns
    the warning's text ("" when the sample is large enough)."""
    per = n_rows / max(n_components, 1)
    if per >= MIN_ROWS_PER_COMPONENT:
        return ""
    text = (f"codebook: a GMM of {n_components} components fitted on {n_rows:,} sample rows ({per:.1f} rows per "
            f"component, fewer than {MIN_ROWS_PER_COMPONENT}); the paper fits {PAPER_COMPONENTS} on "
            f"{PAPER_SAMPLE_ROWS:,} rows ({PAPER_SAMPLE_ROWS / PAPER_COMPONENTS:,.0f} per component). Sample more "
            f"(idt.sample_videos x idt.sample_rows) or fit fewer components (codebook.gmm_components)")
    warnings.warn(text, SmallSampleWarning, stacklevel=3)
    return text


def _type_columns() -> list[tuple[int, int]]:
    cols, start = [], 0
    for _, d in DESCRIPTOR_TYPES:
        cols.append((start, start + d))
        start += d
    return cols


@dataclass(frozen=True)
class CodebookParams:
    """Settings of :func:`fit_codebook` (plain scalars; mirrored 1:1 by the pipeline's pydantic config).

    Attributes:
        n_components: K, Gaussians per GMM (paper: 256).
        pca_mode: ``"concat"`` or ``"per_type"`` (see the module docstring).
        pca_variance: fraction of variance kept by the ``concat`` PCA, in (0, 1].
        gmm_iters: at most this many EM iterations.
        gmm_tol: EM stops when the mean log-likelihood per row changes by less than this.
        gmm_init: ``"kmeans"`` (k-means++ then ``gmm_init_iters`` Lloyd iterations), ``"kmeans++"`` or ``"random"``.
        gmm_init_sample: rows of the (seeded) subsample the initialisation runs on.
        gmm_init_iters: Lloyd iterations of the ``"kmeans"`` initialisation.
        covariance_floor: each GMM variance is at least this fraction of the sample's variance in that dimension.
        seed: seeds the GMM initialisation (block b uses seed + b).
        sketch_dim: d', output dimension of the count sketch (paper: 2000).
        sketch_seed: seed of the count sketch's hash and signs.
        chunk_rows: rows per chunk of the E-step (memory: about chunk_rows * (K + 2D) * 4 bytes).
    """

    n_components: int = 256
    pca_mode: str = "concat"
    pca_variance: float = 0.9
    gmm_iters: int = 100
    gmm_tol: float = 1e-3
    gmm_init: str = "kmeans"
    gmm_init_sample: int = 100_000
    gmm_init_iters: int = 10
    covariance_floor: float = 1e-4
    seed: int = 0
    sketch_dim: int = 2000
    sketch_seed: int = 0
    chunk_rows: int = 4096

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"CodebookParams.{name}: must be a positive integer, got {v!r}")

        for name in ("n_components", "gmm_iters", "gmm_init_sample", "sketch_dim", "chunk_rows"):
            positive_int(name)
        if self.pca_mode not in PCA_MODES:
            raise ValueError(f"CodebookParams.pca_mode: must be one of {PCA_MODES}, got {self.pca_mode!r}")
        if not 0.0 < self.pca_variance <= 1.0:
            raise ValueError(f"CodebookParams.pca_variance: must be in (0, 1], got {self.pca_variance!r}")
        if not self.gmm_tol >= 0:
            raise ValueError(f"CodebookParams.gmm_tol: must be >= 0, got {self.gmm_tol!r}")
        if self.gmm_init not in ("kmeans", "kmeans++", "random"):
            raise ValueError(f"CodebookParams.gmm_init: must be 'kmeans', 'kmeans++' or 'random', got {self.gmm_init!r}")
        if not isinstance(self.gmm_init_iters, (int, np.integer)) or self.gmm_init_iters < 0:
            raise ValueError(f"CodebookParams.gmm_init_iters: must be a non-negative integer, got {self.gmm_init_iters!r}")
        if not 0.0 < self.covariance_floor < 1.0:
            raise ValueError(f"CodebookParams.covariance_floor: must be in (0, 1), got {self.covariance_floor!r}")


@dataclass(frozen=True)
class CodebookBlock:
    """PCA and GMM of one group of descriptor columns.

    Attributes:
        start, stop: the block's columns in the (N, 426) descriptor matrix.
        pca_mean: (D_in,) float32, D_in = stop - start.
        pca_components: (D, D_in) float32, orthonormal rows (projection: (x - mean) @ components.T).
        gmm: the diagonal GMM in the D-dimensional PCA space.
    """

    start: int
    stop: int
    pca_mean: np.ndarray
    pca_components: np.ndarray
    gmm: DiagGMM

    def __post_init__(self) -> None:
        d_in = self.stop - self.start
        if np.shape(self.pca_mean) != (d_in,) or np.shape(self.pca_components)[1:] != (d_in,):
            raise ValueError(
                f"CodebookBlock[{self.start}:{self.stop}]: pca_mean {np.shape(self.pca_mean)} and pca_components "
                f"{np.shape(self.pca_components)} do not match {d_in} input columns"
            )
        if self.gmm.dim != np.shape(self.pca_components)[0]:
            raise ValueError(
                f"CodebookBlock[{self.start}:{self.stop}]: GMM dimension {self.gmm.dim} != PCA output "
                f"{np.shape(self.pca_components)[0]}"
            )

    @property
    def dim(self) -> int:
        """D, the PCA output dimension."""
        return int(np.shape(self.pca_components)[0])

    @property
    def fv_dim(self) -> int:
        """2 K D: the Fisher vector length of this block."""
        return 2 * self.gmm.n_components * self.dim


@dataclass(frozen=True)
class Codebook:
    """Everything needed to encode a video: PCA + GMM per block, and the count-sketch seed.

    Attributes:
        blocks: one block (``concat``) or one per descriptor type (``per_type``), in column order.
        pca_mode: ``"concat"`` or ``"per_type"``.
        sketch_seed, sketch_dim: the count sketch every video is projected with.
        input_dim: descriptor columns expected (426).
    """

    blocks: tuple[CodebookBlock, ...]
    pca_mode: str
    sketch_seed: int
    sketch_dim: int
    input_dim: int = DESCRIPTOR_DIM

    def __post_init__(self) -> None:
        if self.pca_mode not in PCA_MODES:
            raise ValueError(f"Codebook.pca_mode: must be one of {PCA_MODES}, got {self.pca_mode!r}")
        if not self.blocks:
            raise ValueError("Codebook.blocks: empty")
        for b in self.blocks:
            if not 0 <= b.start < b.stop <= self.input_dim:
                raise ValueError(f"Codebook: block columns {b.start}:{b.stop} outside 0:{self.input_dim}")

    @property
    def n_components(self) -> int:
        return self.blocks[0].gmm.n_components

    @property
    def fv_dim(self) -> int:
        """Length of :func:`fisher_vector`'s output: sum over blocks of 2 K D_b."""
        return sum(b.fv_dim for b in self.blocks)

    @cached_property
    def sketch(self) -> CountSketch:
        """The count sketch from ``fv_dim`` to ``sketch_dim`` dims drawn from ``sketch_seed``."""
        return CountSketch.from_seed(self.fv_dim, self.sketch_dim, self.sketch_seed)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat name -> NumPy array mapping (for a Zarr group); inverse of :meth:`from_arrays`."""
        out: dict[str, np.ndarray] = {
            "format_version": np.array([_FORMAT_VERSION], dtype=np.int64),
            "pca_mode": np.array([PCA_MODES.index(self.pca_mode)], dtype=np.int64),
            "sketch": np.array([self.sketch_seed, self.sketch_dim], dtype=np.int64),
            "input_dim": np.array([self.input_dim], dtype=np.int64),
            "block_columns": np.array([[b.start, b.stop] for b in self.blocks], dtype=np.int64),
        }
        for i, b in enumerate(self.blocks):
            out[f"block{i}_pca_mean"] = to_numpy(b.pca_mean).astype(np.float32)
            out[f"block{i}_pca_components"] = to_numpy(b.pca_components).astype(np.float32)
            out[f"block{i}_gmm_weights"] = to_numpy(b.gmm.weights).astype(np.float32)
            out[f"block{i}_gmm_means"] = to_numpy(b.gmm.means).astype(np.float32)
            out[f"block{i}_gmm_variances"] = to_numpy(b.gmm.variances).astype(np.float32)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> "Codebook":
        """Rebuild a codebook from :meth:`to_arrays` output (values may be Zarr arrays or anything ``np.asarray`` takes)."""
        a = {k: np.asarray(v[...] if hasattr(v, "shape") and not isinstance(v, np.ndarray) else v)
             for k, v in arrays.items()}
        try:
            version = int(a["format_version"][0])
            if version != _FORMAT_VERSION:
                raise ValueError(f"codebook arrays: format_version {version}, this code reads {_FORMAT_VERSION}")
            mode = PCA_MODES[int(a["pca_mode"][0])]
            blocks = tuple(
                CodebookBlock(
                    start=int(start), stop=int(stop),
                    pca_mean=a[f"block{i}_pca_mean"].astype(np.float32),
                    pca_components=a[f"block{i}_pca_components"].astype(np.float32),
                    gmm=DiagGMM(
                        weights=a[f"block{i}_gmm_weights"].astype(np.float32),
                        means=a[f"block{i}_gmm_means"].astype(np.float32),
                        variances=a[f"block{i}_gmm_variances"].astype(np.float32),
                    ),
                )
                for i, (start, stop) in enumerate(a["block_columns"])
            )
            return cls(blocks=blocks, pca_mode=mode, sketch_seed=int(a["sketch"][0]), sketch_dim=int(a["sketch"][1]),
                       input_dim=int(a["input_dim"][0]))
        except KeyError as e:
            raise ValueError(f"codebook arrays: missing {e.args[0]!r} (have {sorted(a)})") from e

    def fingerprint(self) -> str:
        """A stable 16-hex-digit hash of the codebook's content (names, dtypes, shapes and bytes of :meth:`to_arrays`)."""
        h = hashlib.sha256()
        for name, arr in sorted(self.to_arrays().items()):
            arr = np.ascontiguousarray(arr)
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
        return h.hexdigest()[:16]


def fit_pca(x: Any, n_components: int | None = None, variance: float = 1.0,
            chunk_rows: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA by an eigendecomposition of the float64 covariance, accumulated chunk by chunk.

    Args:
        x: (n, D_in) float array, n >= 2.
        n_components: components to keep; None: the fewest whose explained variance reaches ``variance``.
        variance: fraction in (0, 1] (used when ``n_components`` is None).
    Returns:
        mean (D_in,) float32, components (D, D_in) float32 (orthonormal rows, sign fixed so each row's largest-magnitude
        entry is positive), explained variance ratio (D,) float64.
    """
    xp = get_array_module(x)
    n, d_in = x.shape
    if n < 2:
        raise ValueError(f"x: {n} rows, PCA needs at least 2")
    s1 = np.zeros(d_in)
    for start in range(0, n, chunk_rows):
        s1 += to_numpy(xp.asarray(x[start:start + chunk_rows], dtype=xp.float64).sum(0))
    mean = s1 / n
    cov = np.zeros((d_in, d_in))
    mean_dev = xp.asarray(mean)
    for start in range(0, n, chunk_rows):
        xc = xp.asarray(x[start:start + chunk_rows], dtype=xp.float64) - mean_dev
        cov += to_numpy(xc.T @ xc)
    cov /= n - 1
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evals = np.maximum(evals[order], 0.0)
    evecs = evecs[:, order].T  # (D_in, D_in), rows = components
    total = evals.sum()
    ratio = evals / total if total > 0 else np.full(d_in, 1.0 / d_in)
    if n_components is None:
        n_components = int(min(d_in, np.searchsorted(np.cumsum(ratio), variance - 1e-12) + 1))
    if not 1 <= n_components <= d_in:
        raise ValueError(f"n_components: must be in [1, {d_in}], got {n_components}")
    comps = evecs[:n_components]
    signs = np.sign(comps[np.arange(n_components), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    return mean.astype(np.float32), comps.astype(np.float32), ratio[:n_components]


def project(x: Any, block: CodebookBlock) -> Any:
    """PCA projection of the block's columns: (n, 426) -> (n, D) float32, ``(x[:, start:stop] - mean) @ components.T``."""
    xp = get_array_module(x)
    comps = xp.asarray(block.pca_components)
    bias = comps @ xp.asarray(block.pca_mean)  # (D,)
    out = xp.asarray(x[:, block.start:block.stop], dtype=xp.float32) @ comps.T
    out -= bias
    return out


def check_descriptors(x: Any, name: str, input_dim: int) -> None:
    shape: Any = getattr(x, "shape", None)
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, {input_dim}), got shape {shape or type(x).__name__}")
    if shape[1] != input_dim:
        hint = f" (full IDT rows? pass rows[:, 10:{IDT_ROW_DIM}])" if shape[1] == IDT_ROW_DIM else ""
        raise ValueError(f"{name}: {shape[1]} columns, expected {input_dim} descriptor columns{hint}")


@dataclass(frozen=True)
class BlockFitReport:
    """What fitting one codebook block went through (for the stage's report; no part of the codebook's arrays).

    Attributes:
        start, stop: the block's descriptor columns.
        pca_dim: D, PCA components kept.
        pca_variance_kept: fraction of the block's variance the kept components explain, in (0, 1].
        log_likelihood: mean log-likelihood per row at each EM iteration's E-step (non-decreasing: EM's property,
            up to float rounding and re-seeded dead components).
        converged: EM stopped on ``gmm_tol`` before ``gmm_iters``.
        reseeded: dead components re-seeded over the iterations.
    """

    start: int
    stop: int
    pca_dim: int
    pca_variance_kept: float
    log_likelihood: tuple[float, ...]
    converged: bool
    reseeded: int

    def to_json(self) -> dict:
        return {"columns": [self.start, self.stop], "pca_dim": self.pca_dim,
                "pca_variance_kept": self.pca_variance_kept, "log_likelihood": list(self.log_likelihood),
                "converged": self.converged, "reseeded": self.reseeded}


def fit_codebook(sample: Any, cfg: CodebookParams = CodebookParams()) -> Codebook:
    """Fit PCA then a diagonal GMM (per block) on a descriptor sample (:func:`fit_codebook_with_report` without the
    report)."""
    return fit_codebook_with_report(sample, cfg)[0]


def fit_codebook_with_report(sample: Any, cfg: CodebookParams = CodebookParams(),
                             progress: Callable[[str], None] | None = None,
                             ) -> tuple[Codebook, tuple[BlockFitReport, ...]]:
    """Fit PCA then a diagonal GMM (per block) on a descriptor sample; also say, per block, the PCA variance kept and
    the EM log-likelihood per iteration.

    Args:
        sample: (n, 426) float array of IDT descriptors (columns 10:436 of IDT rows), n >= cfg.n_components; NumPy or
            CuPy (the GMM EM then runs on the GPU).
        cfg: the settings.
        progress: called with a line per step (each block's PCA, its initialisation, each EM iteration with its
            log-likelihood and seconds), so a long fit is never silent.
    Returns:
        The :class:`Codebook` (host NumPy arrays) and one :class:`BlockFitReport` per block.
    Warns:
        ``SmallSampleWarning`` under ``MIN_ROWS_PER_COMPONENT`` rows per component (every block has all n rows).
    """
    if not isinstance(cfg, CodebookParams):
        raise TypeError(f"cfg: expected CodebookParams, got {type(cfg).__name__}")
    check_descriptors(sample, "sample", DESCRIPTOR_DIM)
    xp = get_array_module(sample)
    n = sample.shape[0]
    if n < cfg.n_components:
        raise ValueError(f"sample: {n} rows, need at least n_components={cfg.n_components}")
    check_sample_size(n, cfg.n_components)
    finite = xp.isfinite(sample).all(axis=1)
    if not bool(finite.all()):
        raise ValueError(f"sample: {int((~finite).sum())} of {n} rows have non-finite values")
    if cfg.pca_mode == "concat":
        groups: list[tuple[tuple[int, int], int | None]] = [((0, DESCRIPTOR_DIM), None)]
    else:
        groups = [((a, b), (b - a) // 2) for a, b in _type_columns()]
    blocks, reports = [], []
    for i, ((start, stop), n_comp) in enumerate(groups):
        mean, comps, ratio = fit_pca(sample[:, start:stop], n_components=n_comp, variance=cfg.pca_variance)
        proto = CodebookBlock(start, stop, mean, comps,
                              DiagGMM(np.ones(1, np.float32), np.zeros((1, len(comps)), np.float32),
                                      np.ones((1, len(comps)), np.float32)))
        z = project(sample, proto)  # (n, D) float32
        where = f"block {i + 1} of {len(groups)} (columns {start}:{stop})"
        if progress is not None:
            progress(f"{where}: PCA to {len(comps)} dimensions, {float(np.sum(ratio)):.3f} of the variance; EM of "
                     f"{cfg.n_components} components on {n} rows")

        def iteration(it: int, ll: float, seconds: float, where: str = where) -> None:
            if progress is not None:
                progress(f"{where}: EM iteration {it} of at most {cfg.gmm_iters}: log-likelihood {ll:.4f} per row "
                         f"({seconds:.2f} s)")

        fit = fit_gmm(z, cfg.n_components, iters=cfg.gmm_iters, tol=cfg.gmm_tol, seed=cfg.seed + i,
                      init=cfg.gmm_init, init_sample=cfg.gmm_init_sample, init_iters=cfg.gmm_init_iters,
                      variance_floor=cfg.covariance_floor, chunk_rows=cfg.chunk_rows, on_iteration=iteration)
        del z
        g = fit.gmm
        gmm = DiagGMM(to_numpy(g.weights).astype(np.float32), to_numpy(g.means).astype(np.float32),
                      to_numpy(g.variances).astype(np.float32))
        blocks.append(CodebookBlock(start, stop, mean, comps, gmm))
        reports.append(BlockFitReport(start, stop, len(comps), min(1.0, float(np.sum(ratio))),
                                      tuple(float(v) for v in fit.log_likelihood), bool(fit.converged),
                                      int(fit.reseeded)))
    book = Codebook(blocks=tuple(blocks), pca_mode=cfg.pca_mode, sketch_seed=cfg.sketch_seed,
                    sketch_dim=cfg.sketch_dim)
    return book, tuple(reports)
