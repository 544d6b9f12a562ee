"""Under ``CI=true`` a skipped test fails, unless it skips for something the project's install cannot give this
machine: an optional extra that ``make install`` leaves out (faiss, torchvision: ``make test-extras``), a CUDA
device, or a capability of the machine (mounting a tmpfs, dropping root with setpriv). A dependency the project
installs (the test extra, Chromium, the reference data beside the clone, the SSDLite graph) that is missing in CI is a
broken install, not a reason to skip. Loaded by ``tests/conftest.py``; ``tests/test_ci_skips.py`` checks it."""

import os

import pytest

ALLOWED_IN_CI = ("faiss not installed", "torchvision not importable", "needs a CUDA device", "no CUDA device",
                 "needs CuPy and a CUDA device", "cannot mount a tmpfs", "without setpriv")
"""Skip reasons (substrings) that stay skips under CI=true."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def allowed_in_ci(reason: str) -> bool:
    return any(part in reason for part in ALLOWED_IN_CI)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if allowed_in_ci(reason):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, where the project's install provides what it needs: {reason} "
                       f"(a skip allowed in CI names one of {list(ALLOWED_IN_CI)}: tests/ci_skips.py)")
