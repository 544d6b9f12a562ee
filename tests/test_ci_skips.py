"""tests/ci_skips.py: under CI=true a skip for something the project installs fails the run; a skip for an optional
extra, a device or a machine capability stays a skip; without CI every skip stays a skip."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

PROBE = '''
import pytest

def test_needs_the_reference_data():
    pytest.skip("reference data absent: ../shared/data")

def test_needs_faiss():
    pytest.skip("faiss not installed")

@pytest.mark.skipif(True, reason="no Chromium (Debian: apt-get install -y chromium)")
def test_needs_chromium():
    pass

def test_runs():
    assert True
'''


def run_probe(tmp_path: Path, ci: str | None, **extra: str) -> str:
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "IDTPRIOR_TEST_EXTRAS")}
    env.update(extra)
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(TESTS)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ci_skips", "-p", "no:cacheprovider", "-rfs",
                          "-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_probe.py")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return out.stdout + out.stderr


def test_under_ci_a_skip_for_what_the_project_installs_fails(tmp_path):
    out = run_probe(tmp_path, "true")
    # the skip in the test fails it; the skipif (at setup) is reported as an error of its setup
    assert "1 failed, 1 passed, 1 skipped, 1 error" in out, out
    assert "FAILED test_probe.py::test_needs_the_reference_data" in out
    assert "ERROR at setup of test_needs_chromium" in out and "no Chromium" in out
    assert "skipped under CI=true, where the project's install provides what it needs: reference data absent" in out
    assert "SKIPPED [1] test_probe.py" in out and "faiss not installed" in out


def test_make_test_extras_fails_a_skip_for_the_extras_too(tmp_path):
    out = run_probe(tmp_path, None, IDTPRIOR_TEST_EXTRAS="1")
    assert "2 failed, 1 passed, 1 error" in out, out
    assert "FAILED test_probe.py::test_needs_faiss" in out and "skipped in make test-extras" in out


def test_without_ci_every_skip_stays_a_skip(tmp_path):
    out = run_probe(tmp_path, None)
    assert "1 passed, 3 skipped" in out, out
    out = run_probe(tmp_path, "false")
    assert "1 passed, 3 skipped" in out, out
