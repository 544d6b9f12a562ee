"""The switch to behaviour versions reruns nothing: a workspace made by the commit before it (every stage of a tiny
pipeline, packed in tests/fixtures by ``make_legacy_workspace.py``) is re-keyed in place by the next run, which
recomputes no chunk, and is then as current as a workspace made today."""

import sys
from pathlib import Path

import pytest
import yaml

from idtprior.cli import main
from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.stages.registry import expected_fingerprints
from idtprior.storage.status import workspace_status

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_legacy_workspace import ROOT, STAGES, config, stage_records, unpacked  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_engine")
ARCHIVE = FIXTURES / "legacy-workspace-b073dad.tar.gz"


@pytest.fixture
def legacy_workspace():
    yield from unpacked(ARCHIVE)


def test_a_workspace_of_the_previous_commit_is_rekeyed_and_reruns_nothing(legacy_workspace, capsys):
    ws = legacy_workspace
    cfg = PipelineConfig.model_validate(config())
    before = stage_records(ws)
    assert all(before[s] for s in STAGES) and not any(r.get("behaviour") for s in STAGES for r in before[s].values())

    # what `idtprior status --config` says before the upgrade runs: every stage up to date, made before versions
    checks = {st.stage: st.check for st in workspace_status(ws, STAGES, expected_fingerprints(cfg, ws))}
    assert checks == {s: "up to date" for s in STAGES}, checks
    (ROOT / "config.yaml").write_text(yaml.safe_dump(config()))
    assert main(["status", ws.url, "--config", str(ROOT / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == len(STAGES) and "out of date" not in out
    assert out.count("made before behaviour versions (the next run re-keys them in place)") == len(STAGES)

    # the first run after the upgrade is of one stage only, the last one: every stage's records are re-keyed, upstream
    # first, so that no stage keys on an upstream key that changes when that stage runs later
    pretrain_pipeline(cfg, stages=["evaluate"], progress=False)
    after = stage_records(ws)
    for stage in STAGES:
        assert set(after[stage]) == set(before[stage]), stage
        for chunk, rec in after[stage].items():
            old = before[stage][chunk]
            # the same data, not recomputed: its commit time and version group unchanged; only its key and stamp moved
            assert (rec["created"], rec["version"], rec.get("files")) == (old["created"], old["version"],
                                                                        old.get("files")), (stage, chunk)
            assert rec["rekeyed_from"] == old["fingerprint"] != rec["fingerprint"], (stage, chunk)
            assert rec["behaviour"].endswith("/v1") and rec["code"], (stage, chunk)
    model = after["pretrain_la"]["all"]["videos"]["model"]
    assert model["legacy_train_fingerprint"] == before["pretrain_la"]["all"]["videos"]["model"]["train_fingerprint"]

    assert (ROOT / "ws" / "cache" / "keys-upgraded.json").is_file()  # later runs skip the upgrade's planning

    # re-keyed, the workspace is current under today's keys: the whole pipeline recomputes and rewrites nothing
    pretrain_pipeline(cfg, progress=False)
    assert stage_records(ws) == after
    checks = {st.stage: st.check for st in workspace_status(ws, STAGES, expected_fingerprints(cfg, ws))}
    assert checks == {s: "up to date" for s in STAGES}, checks
    assert main(["status", ws.url]) == 0
    assert "behaviour versions" not in capsys.readouterr().out

    # and a changed setting still reruns what it changes (here the clusters and what trains on them)
    pretrain_pipeline(cfg.with_updates(cluster={"iters": 6}), stages=["cluster"], progress=False)
    assert ws.read_record("cluster", "all").created != after["cluster"]["all"]["created"]
