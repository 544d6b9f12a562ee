"""What a task reads is what its key was planned from (``idtprior.storage.upstream``): a codebook committed while
encode is held mid-stage fails every encode chunk that would read it under the old key (nothing committed), and the
rerun computes under the new key. (Clusters changed between a training stage's plan and its task:
tests/flows/test_pipeline.py, on that test's workspace.)"""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from idtprior.config import load_config
from idtprior.datasets.synthetic import make_demo_data
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.stages.common import ALL
from idtprior.stages.encode import EncodeJob, encode_one, plan_encode, read_sketches
from idtprior.stages.fit_codebook import fit_codebook_task, plan_fit_codebook, read_codebook
from idtprior.storage import Workspace, read_manifest
from idtprior.storage.upstream import UpstreamChanged
from idtprior.testing import FAULT_ENV

pytestmark = pytest.mark.usefixtures("prefect_engine")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cfg(tmp_path):
    make_demo_data(tmp_path / "data", videos_per_class=1, frames=32)
    return load_config(ROOT / "configs" / "demo.yaml").with_updates(
        workspace=str(tmp_path / "ws"), ingest={"source": str(tmp_path / "data" / "splits" / "trainlist01.txt"),
                                                "video_root": str(tmp_path / "data" / "videos"), "num_chunks": 3},
        idt={"sample_videos": 6, "sample_rows": 100},
        codebook={"gmm_components": 4, "sketch_dim": 64, "gmm_iters": 5},
        dask={"n_workers": 0}, chunk_concurrency=1)


def _commit_codebook(ws: Workspace, cfg, seed: int) -> str:
    """A codebook fitted with another seed, committed as a run of fit_codebook would (its task, no flow)."""
    other = cfg.with_updates(codebook={"seed": seed})
    plan = plan_fit_codebook(other, ws)[ALL]
    return fit_codebook_task.fn(ws.url, "fit_codebook", ALL, plan["fingerprint"],
                                             other.codebook, upstream=plan["upstream"]).fingerprint


def test_a_codebook_committed_while_encode_runs_fails_the_chunks_that_would_read_it(cfg, monkeypatch):
    ws = Workspace(cfg.workspace)
    pretrain_pipeline(cfg, stages=["ingest", "idt", "fit_codebook"], progress=False)
    planned = plan_encode(cfg, ws)
    first = sorted(planned)[0]
    assert len(planned) >= 2  # chunks that start after the held one
    monkeypatch.setenv(FAULT_ENV, f"encode:{first}:hold")  # its last video waits once its work is done
    held, release = Path(ws.path("faults", f"encode-{first}.held")), Path(ws.path("faults", f"encode-{first}.release"))
    new_book: list[str] = []

    def meanwhile():  # the UI's fit_codebook run, while encode is held in its first chunk
        deadline = time.monotonic() + 120
        while not held.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        new_book.append(_commit_codebook(ws, cfg, seed=cfg.codebook.seed + 1))
        release.touch()

    other = threading.Thread(target=meanwhile)
    other.start()
    with pytest.raises(RuntimeError, match=rf"encode: {len(planned)} of {len(planned)} chunks failed") as info:
        pretrain_pipeline(cfg, stages=["encode"], progress=False)
    other.join()
    cause = info.value.__cause__
    assert isinstance(cause, UpstreamChanged), repr(cause)
    assert "upstream changed since planning: fit_codebook all is keyed" in str(cause)
    assert "nothing committed; rerun the stage" in str(cause)
    # no chunk committed: neither the later ones (the new codebook under the old key) nor the held one (its codebook
    # is no longer the workspace's: a rerun plans new keys for it anyway)
    assert ws.records("encode") == {}
    assert ws.read_record("fit_codebook", ALL).fingerprint == new_book[0]

    monkeypatch.delenv(FAULT_ENV)
    pretrain_pipeline(cfg, stages=["encode"], progress=False)  # the rerun plans from the new codebook
    replanned = plan_encode(cfg, ws)
    assert {c: r.fingerprint for c, r in ws.records("encode").items()} == {
        c: p["fingerprint"] for c, p in replanned.items()}
    assert all(replanned[c]["fingerprint"] != planned[c]["fingerprint"] for c in planned)
    # the sketches are the new codebook's: one video encoded again by hand
    row = read_manifest(ws)[0]
    book = read_codebook(ws)
    want = encode_one(row.video_id, ws.url, "encode", row.chunk, "", row.path,
                      EncodeJob.of(cfg.idt, cfg.encode, book))["_sketch"]
    sketches, valid = read_sketches(ws, [row.video_id])
    np.testing.assert_array_equal(sketches[0], want)
