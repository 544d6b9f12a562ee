"""GPU check of the encoding cores: CuPy results equal NumPy's, and CuPy timings against NumPy measured in this run.

    python benchmarks/encode_gpu_check.py            # ~1 minute on an H100 (most of it NumPy on the host)
    python benchmarks/encode_gpu_check.py --quick    # smaller sizes
    python benchmarks/encode_gpu_check.py --quick --numpy-dry-run   # no GPU: runs the script's plumbing with NumPy twice

Needs only numpy, scipy and cupy (imports ``idtprior.encoding`` from this checkout; no Prefect, Zarr, PyAV or pydantic).
Each check prints PASS/FAIL with the measured difference; the script exits 1 if any check fails and 2 when CuPy or a
CUDA device is missing. What it asserts (same seeded inputs on both sides):

1. fit_pca: the PCA mean and components agree (1e-4; signs are fixed by the code).
2. fisher_vector (concat and per_type codebooks, 20,000 x 426 descriptors, K=256): max |fv_cupy - fv_numpy| < 1e-4 on
   unit vectors; count_sketch of the batch of vectors agrees to 1e-5.
3. GMM: sufficient statistics of 200,000 x 48 rows under one K=256 mixture agree to 1e-4 relative (float32 and float64
   statistics); one EM iteration gives the same means/variances (1e-3 relative) and log-likelihood (1e-5 relative);
   fit_gmm (k-means init + 5 EM iterations) reaches the same log-likelihood (1e-3 relative).
4. kmeans (planted partition, 20,000 x 256, K=50, 2 runs x n_init=2): the CuPy Lloyd recovers it as well as NumPy
   (NMI > 0.95 each, and the two labelings agree, NMI > 0.99).
Timings (seconds and numpy/cupy ratios): Fisher vector per video, EM iteration, k-means iteration at N=50,000, d=2000,
K=1000. GPU times are taken after a warm-up call (CuPy compiles kernels on first use) with the device synchronised.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from idtprior.encoding import (  # noqa: E402
    DESCRIPTOR_DIM,
    CodebookParams,
    count_sketch,
    cupy_available,
    em_step,
    fisher_vector,
    fit_codebook,
    fit_gmm,
    fit_pca,
    kmeans,
    sufficient_statistics,
    to_numpy,
)

FAILED: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def guarded(fn):
    """Run one check group; an exception counts as a failure of that group, and the others still run."""
    def run(*args):
        try:
            return fn(*args)
        except Exception as e:  # a crash on the device is a finding, not the end of the report
            check(fn.__name__, False, f"raised {type(e).__name__}: {e}")
            return {}
    return run


def best_time(fn, repeats: int, sync=None) -> float:
    fn()  # warm-up (CuPy kernel compilation, BLAS threads)
    if sync:
        sync()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return best


def rel(a, b) -> float:
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def descriptors(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 426) float32 with cluster structure and a decaying spectrum (like PCA-able IDT descriptors)."""
    centers = rng.standard_normal((64, DESCRIPTOR_DIM)).astype(np.float32)
    x = centers[rng.integers(0, 64, n)] + rng.standard_normal((n, DESCRIPTOR_DIM)).astype(np.float32)
    return x * np.geomspace(1.0, 0.05, DESCRIPTOR_DIM).astype(np.float32)


@guarded
def check_fisher(cp, args, rng, sync) -> dict:
    print(f"\n== PCA, Fisher vector, count sketch ({args.fv_rows} x {DESCRIPTOR_DIM} per video, K={args.k}) ==")
    sample = descriptors(args.sample_rows, rng)
    mean_h, comps_h, _ = fit_pca(sample, variance=0.9)
    mean_d, comps_d, _ = fit_pca(cp.asarray(sample), variance=0.9)
    check("fit_pca", comps_h.shape == comps_d.shape and rel(mean_d, mean_h) < 1e-4 and rel(comps_d, comps_h) < 1e-4,
          f"D={comps_h.shape[0]}, rel diff mean {rel(mean_d, mean_h):.1e}, components {rel(comps_d, comps_h):.1e}")
    out = {}
    videos = [descriptors(args.fv_rows, rng) for _ in range(4)]
    for mode in ("concat", "per_type"):
        book = fit_codebook(sample, CodebookParams(n_components=args.k, pca_mode=mode, gmm_iters=5))
        fv_h = np.stack([fisher_vector(v, book)[0] for v in videos])
        fv_d = cp.stack([fisher_vector(cp.asarray(v), book)[0] for v in videos])
        diff = float(np.abs(to_numpy(fv_d) - fv_h).max())
        check(f"fisher_vector {mode}", diff < 1e-4, f"fv_dim {book.fv_dim}, max abs diff {diff:.1e} (unit vectors)")
        sk_h, sk_d = count_sketch(fv_h, book), count_sketch(fv_d, book)
        sk1 = count_sketch(fv_d[0], book)
        diff_sk = max(float(np.abs(to_numpy(sk_d) - sk_h).max()), float(np.abs(to_numpy(sk1) - sk_h[0]).max()))
        check(f"count_sketch {mode}", diff_sk < 1e-5, f"max abs diff {diff_sk:.1e}")
        v_h, v_d = videos[0], cp.asarray(videos[0])
        t_h = best_time(lambda v_h=v_h, book=book: count_sketch(fisher_vector(v_h, book)[0], book), args.repeats)
        t_d = best_time(lambda v_d=v_d, book=book: count_sketch(fisher_vector(v_d, book)[0], book), args.repeats, sync)
        print(f"  FV+sketch {mode:8s}: numpy {1e3 * t_h:8.1f} ms/video, cupy {1e3 * t_d:7.2f} ms/video "
              f"(data already on the device) -> {t_h / t_d:6.1f}x")
        out[f"fv_{mode}"] = (t_h, t_d)
    return out


@guarded
def check_gmm(cp, args, rng, sync) -> dict:
    n, d, k = args.gmm_rows, 48, args.k
    print(f"\n== GMM EM ({n} x {d}, K={k}) ==")
    centers = rng.standard_normal((512, d)).astype(np.float32) * 2
    x = centers[rng.integers(0, 512, n)] + rng.standard_normal((n, d)).astype(np.float32)
    xd = cp.asarray(x)
    init = fit_gmm(x, k, iters=0, seed=0, init_sample=50_000).gmm
    init_d = type(init)(cp.asarray(init.weights), cp.asarray(init.means), cp.asarray(init.variances))
    for prec in ("float32", "float64"):
        h = sufficient_statistics(x, init, precision=prec)
        g = sufficient_statistics(xd, init_d, precision=prec)
        worst = max(rel(g[i], h[i]) for i in range(4))
        check(f"sufficient_statistics {prec}", worst < 1e-4, f"max rel diff over s0, s1, s2, loglik {worst:.1e}")
    data_var = x.astype(np.float64).var(0)
    floor = 1e-4 * data_var
    floor_d, var_d = cp.asarray(floor), cp.asarray(data_var)
    gh, llh, _ = em_step(x, init, floor, data_var)
    gd, lld, _ = em_step(xd, init_d, floor_d, var_d)
    worst = max(rel(gd.means, gh.means), rel(gd.variances, gh.variances), rel(gd.weights, gh.weights))
    check("em_step", worst < 1e-3 and abs(lld - llh) < 1e-5 * abs(llh),
          f"max rel diff of parameters {worst:.1e}, log-lik {llh:.6f} vs {lld:.6f}")
    fh = fit_gmm(x, k, iters=5, tol=0.0, seed=0, init_sample=50_000)
    fd = fit_gmm(xd, k, iters=5, tol=0.0, seed=0, init_sample=50_000)
    a, b = fh.log_likelihood[-1], fd.log_likelihood[-1]
    check("fit_gmm", abs(a - b) < 1e-3 * abs(a), f"log-lik after 5 iterations numpy {a:.5f}, cupy {b:.5f}")
    t_h = best_time(lambda: em_step(x, init, floor, data_var), args.repeats)
    t_d = best_time(lambda: em_step(xd, init_d, floor_d, var_d), args.repeats, sync)
    print(f"  EM iteration: numpy {t_h:.3f} s, cupy {1e3 * t_d:.1f} ms -> {t_h / t_d:.1f}x")
    return {"em": (t_h, t_d)}


@guarded
def check_kmeans(cp, args, rng, sync) -> dict:
    from sklearn.metrics import normalized_mutual_info_score as nmi

    print("\n== k-means ==")
    n, d, k = 20_000, 256, 50
    centers = rng.standard_normal((k, d)).astype(np.float32)
    truth = rng.integers(0, k, n)
    x = centers[truth] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    lh, _ = kmeans(x, k, runs=2, seed=0, iters=20, backend="numpy", n_init=2)
    ld, _ = kmeans(cp.asarray(x), k, runs=2, seed=0, iters=20, backend=args.device_backend, n_init=2)
    ld = to_numpy(ld)
    q_h = min(nmi(truth, r) for r in lh)
    q_d = min(nmi(truth, r) for r in ld)
    agree = min(nmi(a, b) for a, b in zip(lh, ld))
    check("kmeans planted", q_h > 0.95 and q_d > 0.95 and agree > 0.99,
          f"NMI with the planted labels numpy {q_h:.4f}, cupy {q_d:.4f}; numpy vs cupy {agree:.4f}")
    n, d, k, it = args.km_rows, 2000, args.km_k, 3
    x = rng.standard_normal((n, d)).astype(np.float32)
    xd = cp.asarray(x)

    def per_iter(data, backend, sync_fn=None) -> float:
        t0 = best_time(lambda: kmeans(data, k, runs=1, seed=0, iters=0, backend=backend, init="random"), 1, sync_fn)
        t1 = best_time(lambda: kmeans(data, k, runs=1, seed=0, iters=it, backend=backend, init="random"), 1, sync_fn)
        return (t1 - t0) / it

    t_h, t_d = per_iter(x, "numpy"), per_iter(xd, args.device_backend, sync)
    print(f"  k-means iteration N={n}, d={d}, K={k}: numpy {t_h:.3f} s, cupy {1e3 * t_d:.1f} ms -> {t_h / t_d:.1f}x")
    return {"km": (t_h, t_d)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--fv-rows", type=int, default=20_000)
    p.add_argument("--sample-rows", type=int, default=50_000)
    p.add_argument("--gmm-rows", type=int, default=200_000)
    p.add_argument("--km-rows", type=int, default=50_000)
    p.add_argument("--km-k", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--numpy-dry-run", action="store_true", help="no GPU: NumPy on both sides (checks the script only)")
    args = p.parse_args()
    args.device_backend = "numpy" if args.numpy_dry_run else "cupy"
    if args.quick:
        args.fv_rows, args.sample_rows, args.gmm_rows, args.km_rows, args.km_k, args.repeats = (
            5000, 20_000, 50_000, 10_000, 200, 2)
    if args.numpy_dry_run:
        cp, sync = np, None
        print("DRY RUN: NumPy on both sides; this checks the script, not the GPU")
    elif not cupy_available():
        print("CuPy or a CUDA device is not available: nothing checked", file=sys.stderr)
        return 2
    else:
        import cupy as cp

        dev = cp.cuda.Device()
        print(f"cupy {cp.__version__}, device {cp.cuda.runtime.getDeviceProperties(dev.id)['name'].decode()}, "
              f"numpy {np.__version__}, {os.cpu_count()} host cores")
        sync = dev.synchronize
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    results = {}
    results.update(check_fisher(cp, args, rng, sync))
    results.update(check_gmm(cp, args, rng, sync))
    results.update(check_kmeans(cp, args, rng, sync))
    print("\n== summary (numpy / cupy, same run) ==")
    for name, (h, d) in results.items():
        print(f"  {name:14s} numpy {h:9.4f} s  cupy {d:9.5f} s  ratio {h / d:7.1f}x")
    print(f"total {time.perf_counter() - t0:.0f} s; {'FAILED: ' + ', '.join(FAILED) if FAILED else 'all checks passed'}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
