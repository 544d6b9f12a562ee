"""At the bundled configs' sizes the cores still choose what ``data/decisions.json`` pins (``decisions.py``: which
choices, and why a golden on a tiny fixture cannot see them)."""

import importlib

import decisions
import pytest


@pytest.mark.parametrize("config", decisions.CONFIGS)
def test_the_cores_choose_as_pinned_at_the_config_sizes(config):
    pinned = decisions.load()
    assert config in pinned, f"no trace of {config} pinned: python tests/golden/decisions.py write"
    changed = decisions.differences({config: pinned[config]}, {config: decisions.trace(config)})
    assert not changed, (
        f"a size-dependent choice of the cores moved for the bundled config {config}:\n  " + "\n  ".join(changed)
        + "\nWhere the new choice changes what a stage computes at that size (a seeding, a sample size), raise its "
          "BEHAVIOUR version and run `python -m idtprior.runtime.pins bump STAGE`: workspaces of that size recompute "
          "it. Either way pin the new trace: python tests/golden/decisions.py write")


def test_the_trace_sees_a_moved_seeding_threshold(monkeypatch):
    """Kinetics' cluster stage (235,000 sketches of 2000 dimensions, k = 6000) seeds with random rows; a threshold
    raised past its k-means++ cost must show in the trace, where the cluster golden (200 rows) cannot see it."""
    kmeans_module = importlib.import_module("idtprior.encoding.kmeans")
    before = decisions.trace("kinetics400")
    monkeypatch.setattr(kmeans_module, "KPP_AUTO_FLOPS", 1e13)
    changed = decisions.differences({"kinetics400": before}, {"kinetics400": decisions.trace("kinetics400")})
    assert "kinetics400.cluster.seeding: pinned random, now k-means++ (stage cluster)" in changed
