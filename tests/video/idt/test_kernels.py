"""The compiled kernels: compiled once per source version into the cache folder, a clear error without a compiler, and
arrays checked before the C code sees them. (Their arithmetic is tested through the flow and the descriptors.)"""

import os
import subprocess
import sys

import numpy as np
import pytest

from idtprior.video.idt import kernels

LOAD = "import idtprior.video.idt.kernels as k; print(k.library_path())"


def python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)


def test_compiled_once_into_the_cache_and_reused(tmp_path):
    first = python(LOAD, IDTPRIOR_KERNEL_CACHE=str(tmp_path))
    assert first.returncode == 0, first.stderr
    lib = tmp_path / first.stdout.strip().rsplit("/", 1)[1]
    assert lib.is_file() and [p.name for p in tmp_path.iterdir()] == [lib.name]  # no temporary file left
    mtime = lib.stat().st_mtime_ns
    again = python(LOAD, IDTPRIOR_KERNEL_CACHE=str(tmp_path), CC="/nonexistent/cc")  # no compiler needed now
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout and lib.stat().st_mtime_ns == mtime


def test_no_compiler_is_a_clear_error(tmp_path):
    out = python(LOAD, IDTPRIOR_KERNEL_CACHE=str(tmp_path), CC="/nonexistent/cc")
    assert out.returncode != 0
    assert "need a C compiler: '/nonexistent/cc'" in out.stderr and "Traceback" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_arrays_are_checked_before_the_c_code_sees_them():
    R = np.zeros((4, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"R1: expected a C-contiguous float32 array of shape \(4, 5, 5\), got float64"):
        kernels.farneback_update(R, R.astype(np.float64), np.zeros((4, 5, 2), np.float32), np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"out: expected \(n=3, C >= 9\)"):
        kernels.orientation_votes(np.ones(3, np.float32), np.ones(3, np.float32), np.zeros((3, 8), np.float32), 1, 8)
    out = np.full((3, 10), 7.0, np.float32)
    kernels.orientation_votes(np.ones(3, np.float32), np.float32([0.0, np.pi / 8, 2 * np.pi]), out, 1, 8,
                              zero=np.array([False, False, True]))
    np.testing.assert_allclose(out[:, 1:9], [[1, 0, 0, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0, 0, 0], [0] * 8],
                               atol=1e-6)
    assert (out[:, [0, 9]] == 7.0).all()  # other channels untouched
