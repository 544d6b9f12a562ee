"""A workspace made by an earlier commit is current for this one: nothing reruns, no record is rewritten.

Each fixture is every stage of a tiny pipeline as a commit computed it (``make_legacy_workspace.py <commit>``, run
from a checkout of that commit):

- fca3932, the last commit before the import contracts, the stage registry, the presets module and the renamed
  private helpers (issue 31);
- cd5b497, the last commit before one module per stage, the runtime layer, typed jobs and the split of
  ``models/lightning.py``, ``plan.py``, ``config.py`` and ``cli.py`` (issue 32).

Both moved code across modules and re-pinned, never bumped, the stages' fingerprints. A layout change that changes a
key, a plan or a record fails here."""

import json
import sys
from pathlib import Path

import pytest

from idtprior.cli import main
from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.stages.registry import expected_fingerprints
from idtprior.storage.status import workspace_status

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_legacy_workspace import ROOT, STAGES, config, stage_records, unpacked  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_engine")
COMMITS = ("fca3932", "cd5b497")


@pytest.fixture(params=COMMITS)
def earlier_workspace(request):
    for ws in unpacked(FIXTURES / f"workspace-{request.param}.tar.gz"):
        yield request.param, ws


def test_a_workspace_of_an_earlier_commit_reruns_nothing(earlier_workspace, capsys):
    commit, ws = earlier_workspace
    assert (ROOT / "COMMIT").read_text().strip() == commit
    cfg = PipelineConfig.model_validate(config())
    before = stage_records(ws)
    assert all(before[s] for s in STAGES) and all(r.get("behaviour") for s in STAGES for r in before[s].values())

    # planned with today's code, every chunk's key is the one its record holds
    checks = {st.stage: st.check for st in workspace_status(ws, STAGES, expected_fingerprints(cfg, ws))}
    assert checks == {s: "up to date" for s in STAGES}, checks
    (ROOT / "config.yaml").write_text(json.dumps(config()))
    assert main(["status", ws.url, "--config", str(ROOT / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == len(STAGES) and "out of date" not in out

    # and a run of the whole pipeline computes, re-keys and rewrites nothing
    pretrain_pipeline(cfg, progress=False)
    assert stage_records(ws) == before
