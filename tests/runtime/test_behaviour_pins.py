"""The guard on the keys: every stage's code, declared version and golden outputs agree with its pin, and the pin
tool's two answers (re-pin a behaviour-preserving change with its reason; bump a version when results change) do what
they say, on a copy of the pin file."""

import json

import pytest

from idtprior.runtime import codeprint, pins
from idtprior.stages import cluster, encode


@pytest.mark.parametrize("stage", sorted(codeprint.STAGE_ROOTS))
def test_the_code_of_every_stage_agrees_with_its_pin(stage):
    pin = codeprint.pins().get(stage)
    assert pin is not None, f"{stage} has no pin in {codeprint.PINS_FILE}: add it with its BEHAVIOUR version"
    declared = codeprint.behaviour_version(stage)
    assert declared == pin["version"], (
        f"{stage} declares behaviour version {declared} and is pinned at {pin['version']}: after raising a version, "
        f"run `python -m idtprior.runtime.pins bump {stage}` (it pins the code and regenerates the golden outputs)")
    fingerprint = codeprint.code_fingerprint(stage)
    assert fingerprint == pin["fingerprint"], (
        f"the code {stage} runs changed (fingerprint {fingerprint}, pinned {pin['fingerprint']}) and its behaviour "
        f"version did not. Two honest answers: results change -> raise BEHAVIOUR[{stage!r}] in its stage module and "
        f"run `python -m idtprior.runtime.pins bump {stage}` (workspaces recompute {stage} and what follows); results "
        f"do not change -> `python -m idtprior.runtime.pins repin {stage} --reason '<why>'` (nothing reruns). "
        f"`python -m idtprior.runtime.pins status` lists every stage that moved.")
    golden = pins.golden_digest(stage)
    assert golden is None or golden == pin["golden"], (
        f"the golden outputs of {stage} ({pins.golden_file(stage).name}) changed without a version bump: they may "
        f"change only with `python -m idtprior.runtime.pins bump {stage}`")


@pytest.fixture
def pin_copy(tmp_path, monkeypatch):
    """The pin tool working on a copy of the pin file."""
    copy = tmp_path / "behaviour_pins.json"
    copy.write_text(codeprint.PINS_FILE.read_text())
    monkeypatch.setattr(codeprint, "PINS_FILE", copy)
    codeprint.pins.cache_clear()
    yield copy
    codeprint.pins.cache_clear()


def test_repin_keeps_the_reason_and_bump_wants_a_new_version(pin_copy, monkeypatch):
    stage = "cluster"
    monkeypatch.setattr(codeprint, "code_fingerprint", lambda s: "0123456789abcdef" if s == stage else "x")
    with pytest.raises(SystemExit, match="give --reason"):
        pins.repin(stage, " ")
    with pytest.raises(SystemExit, match="raise BEHAVIOUR"):
        pins.bump(stage, regenerate=False)
    old = json.loads(pin_copy.read_text())[stage]["fingerprint"]
    pins.repin(stage, "renamed a local variable")
    pin = json.loads(pin_copy.read_text())[stage]
    assert pin["fingerprint"] == "0123456789abcdef" and pin["version"] == 1
    assert pin["repins"][-1] == {"version": 1, "from": old, "to": "0123456789abcdef",
                                 "reason": "renamed a local variable", "date": pin["repins"][-1]["date"]}
    # records computed by the code before the re-pin are listed with the reasons since
    assert pins.repinned_since(stage, old) == ["renamed a local variable"]
    assert pins.repinned_since(stage, "0123456789abcdef") == []

    monkeypatch.setitem(cluster.BEHAVIOUR, stage, 2)
    with pytest.raises(SystemExit, match="that is a bump"):
        pins.repin(stage, "not a re-pin")
    pins.bump(stage, regenerate=False)
    pin = json.loads(pin_copy.read_text())[stage]
    assert pin["version"] == 2 and pin["repins"][-1]["bumped"]
    assert pins.repinned_since(stage, old) == []  # a bump recomputes: nothing computed before it is served


def test_status_names_what_moved(pin_copy, monkeypatch, capsys):
    assert pins.main(["status"]) == 0 and "every stage agrees" in capsys.readouterr().out
    monkeypatch.setitem(encode.BEHAVIOUR, "encode", 7)
    assert pins.main(["status"]) == 1
    assert "encode: declares v7, pinned v1" in capsys.readouterr().out


def test_provenance_names_repinned_code_legacy_records_and_a_changed_environment(pin_copy, monkeypatch):
    from idtprior.storage import ChunkRecord
    from idtprior.runtime.environment import environment

    stage = "cluster"
    old = codeprint.pins()[stage]["fingerprint"]
    monkeypatch.setattr(codeprint, "code_fingerprint", lambda s: "fedcba9876543210")
    pins.repin(stage, "split kmeans.py in two")
    now = environment()
    then = {**now, "numpy": "1.26.0"}
    records = [ChunkRecord(stage, "all", "k1", "v", behaviour="cluster/v1", code=old, env=then),
               ChunkRecord(stage, "all", "k2", "v", behaviour="cluster/v1", code="fedcba9876543210", env=now),
               ChunkRecord(stage, "all", "k3", "v")]
    assert pins.provenance(stage, records, now) == [
        "1 of 3 records made before behaviour versions (the next run re-keys them in place)",
        "1 of 3 records computed by code re-pinned since: 'split kmeans.py in two'",
        f"computed with numpy 1.26.0; this environment has {now['numpy']}"]
    assert pins.provenance(stage, records[1:2], now) == []
