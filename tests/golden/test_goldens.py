"""Every stage's core, run now on its golden fixture, still computes the stored golden, and the golden was written under
the behaviour version the stage declares (``goldens.py``: what a golden is and how to write one)."""

import pytest

import goldens


def computed_or_skip(stage: str) -> dict:
    try:
        return goldens.compute(stage)
    except goldens.FixtureMissing as e:
        pytest.skip(str(e))


def stored(stage: str) -> tuple[dict, int]:
    path = goldens.golden_file(stage)
    if not path.exists():
        pytest.fail(f"{stage}: no golden {path}; write it: python tests/golden/goldens.py write {stage}")
    return goldens.load(stage)


@pytest.mark.parametrize("stage", goldens.GOLDEN_STAGES)
def test_golden_was_written_under_the_declared_behaviour_version(stage):
    _, version = stored(stage)
    declared = goldens.stage_version(stage)
    assert version == declared, (
        f"{stage}: its golden {goldens.golden_file(stage).name} was written under behaviour version {version}, the "
        f"stage now declares {declared}: a new version comes with the golden of the new behaviour. "
        f"`python -m idtprior.runtime.pins bump {stage}` pins the version and writes it "
        f"(or: python tests/golden/goldens.py write {stage})")


@pytest.mark.parametrize("stage", goldens.GOLDEN_STAGES)
def test_stage_computes_its_golden(stage):
    golden, version = stored(stage)
    problems = goldens.mismatches(stage, golden, computed_or_skip(stage))
    assert not problems, (
        f"{stage}: the core no longer computes its golden (behaviour version {version}):\n  " + "\n  ".join(problems)
        + f"\nResults that change need a new behaviour version, or workspaces keep serving those of the old one: raise "
          f"BEHAVIOUR[{stage!r}] in its task module and run `python -m idtprior.runtime.pins bump {stage}` (it writes "
          f"the new golden). A change meant to keep the results does not: find what moved.")


def test_mismatches_compares_floats_within_tolerance_and_the_rest_exactly():
    import numpy as np

    golden = {"x": np.array([1.0, 2.0]), "n": np.array([3, 4]), "s": np.array(["a"])}
    rtol = goldens.TOLERANCES["cluster"]["rtol"]
    assert goldens.mismatches("cluster", golden, {**golden, "x": golden["x"] * (1 + rtol / 2)}) == []
    assert [p.split(":")[0] for p in goldens.mismatches("cluster", golden, {
        "x": golden["x"] * (1 + 10 * rtol), "n": np.array([3, 5]), "s": np.array(["b"])})] == ["n", "s", "x"]
    assert goldens.mismatches("cluster", golden, {"x": golden["x"]}) == ["n: not computed", "s: not computed"]
    assert "shape" in goldens.mismatches("cluster", {"x": golden["x"]}, {"x": golden["x"][:1]})[0]
