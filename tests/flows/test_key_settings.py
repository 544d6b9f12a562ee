"""What the keys hold besides the behaviour versions: model files by content (not path), no execution settings, and
training keyed on the frames' content, not on how the frame store is chunked (real engine, real workspace)."""

from pathlib import Path

import pytest

from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.runtime.environment import environment
from idtprior.stages import detect as detect_tasks
from idtprior.stages.detect import plan_detect
from idtprior.stages.pretrain.flow import plan_train_stage
from idtprior.storage import Workspace
from idtprior.storage.lock import WorkspaceLock
from idtprior_testutils import write_moving_square_videos

pytestmark = pytest.mark.usefixtures("prefect_engine")

TINY = {"width": 0.0625, "embed_dim": 8, "clip_length": 4, "crop_size": 16, "batch_size": 2, "negatives": 4,
        "num_workers": 0, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    write_moving_square_videos(root / "videos", 4)
    cfg = PipelineConfig.model_validate({
        "workspace": str(root / "ws"), "ingest": {"source": str(root / "videos"), "num_chunks": 2},
        "decode": {"short_side": 32, "time_chunk": 4}, "dask": {"n_workers": 0}, "pretrain": TINY})
    pretrain_pipeline(cfg, stages=["ingest", "decode"], progress=False)
    return cfg


def detect_keys(cfg: PipelineConfig) -> dict[str, str]:
    return {c: p["fingerprint"] for c, p in plan_detect(cfg, Workspace(cfg.workspace), remember=False).items()}


def test_detector_weights_are_keyed_by_content_not_path_and_devices_not_at_all(decoded, tmp_path, monkeypatch):
    weights = tmp_path / "a" / "weights.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"\x00" * 1000)
    cfg = decoded.with_updates(detect={"backend": "maskrcnn", "maskrcnn_weights": str(weights)})
    first = detect_keys(cfg)
    moved = tmp_path / "b" / "same.pth"
    moved.parent.mkdir()
    moved.write_bytes(weights.read_bytes())
    assert detect_keys(cfg.with_updates(detect={"maskrcnn_weights": str(moved), "device": "cuda:3",
                                                "batch_size": 99})) == first
    moved.write_bytes(b"\x00" * 999 + b"\x01")  # same size, other weights: other boxes
    assert detect_keys(cfg.with_updates(detect={"maskrcnn_weights": str(moved)})).keys() == first.keys()
    assert all(a != b for a, b in zip(detect_keys(cfg.with_updates(detect={"maskrcnn_weights": str(moved)})).values(),
                                      first.values()))
    # the embedded SSDLite graph is a model file too
    assert detect_tasks.model_files(decoded.detect) and detect_tasks.model_files(decoded.detect)[0].is_file()
    graph = tmp_path / "graph.pb"
    graph.write_bytes(b"graph v1")
    monkeypatch.setattr(detect_tasks, "model_files", lambda c: [graph])
    ssd = detect_keys(decoded)
    graph.write_bytes(b"graph v2")
    assert detect_keys(decoded) != ssd


def test_training_is_keyed_on_frame_content_not_on_the_time_chunking(decoded):
    ws = Workspace(decoded.workspace)
    key = plan_train_stage("pretrain_ir", decoded)["fingerprint"]
    decode_before = {c: r.created for c, r in ws.records("decode").items()}
    rechunked = decoded.with_updates(decode={"time_chunk": 8})
    pretrain_pipeline(rechunked, stages=["decode"], progress=False)  # the frames stored again, chunked otherwise
    assert all(r.created != decode_before[c] for c, r in ws.records("decode").items())
    assert plan_train_stage("pretrain_ir", rechunked)["fingerprint"] == key
    # frames that differ do change it
    assert plan_train_stage("pretrain_ir", decoded.with_updates(decode={"short_side": 24}))["fingerprint"] != key


def test_a_bad_repin_is_undone_for_exactly_the_records_computed_before_it(decoded, tmp_path, monkeypatch, capsys):
    """A record computed by code that was re-pinned since is listed by `idtprior status`; `idtprior recompute
    --repinned` makes the next run recompute exactly that chunk."""
    import json

    from idtprior.cli import main
    from idtprior.runtime import codeprint

    ws = Workspace(decoded.workspace)
    pretrain_pipeline(decoded, stages=["decode"], progress=False)  # current with this module's config
    records = ws.records("decode")
    assert len(records) == 2 and all(r.code == codeprint.pins()["decode"]["fingerprint"] for r in records.values())
    older, newer = sorted(records)
    path = Path(ws.record_path("decode", older))
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "code": "0000aaaa0000aaaa"}))  # computed before the re-pin below
    pins = json.loads(codeprint.PINS_FILE.read_text())
    pins["decode"]["repins"].append({"version": 1, "from": "0000aaaa0000aaaa", "to": pins["decode"]["fingerprint"],
                                     "reason": "a rename (it was not)", "date": "2026-12-07"})
    copy = tmp_path / "pins.json"
    copy.write_text(json.dumps(pins))
    monkeypatch.setattr(codeprint, "PINS_FILE", copy)
    codeprint.pins.cache_clear()
    try:
        assert main(["status", ws.url]) == 0
        assert "1 of 2 records computed by code re-pinned since: 'a rename (it was not)'" in capsys.readouterr().out
        with WorkspaceLock(ws, "decode", heartbeat_s=0):  # a run of decode: recompute rewrites no record beside it
            assert main(["recompute", ws.url, "--repinned"]) == 2
        assert "error: stage decode of workspace" in capsys.readouterr().err
        assert main(["recompute", ws.url, "--repinned"]) == 0
        assert "decode: 1 records computed by code re-pinned since" in capsys.readouterr().out
        before = {c: r.created for c, r in ws.records("decode").items()}
        pretrain_pipeline(decoded, stages=["decode"], progress=False)
        after = ws.records("decode")
        assert after[older].created != before[older] and after[newer].created == before[newer]
        assert after[older].code == pins["decode"]["fingerprint"]
        assert main(["recompute", ws.url, "--repinned"]) == 0
        assert "no record was computed by code re-pinned since" in capsys.readouterr().out
    finally:
        codeprint.pins.cache_clear()

    # a record computed with another NumPy: the stage's summary artifact says so, and nothing reruns for it
    path = Path(ws.record_path("decode", newer))
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "env": {**stored["env"], "numpy": "1.26.0"}}))
    created = {c: r.created for c, r in ws.records("decode").items()}
    pretrain_pipeline(decoded, stages=["decode"], progress=False)
    assert {c: r.created for c, r in ws.records("decode").items()} == created
    summary = summary_markdown(ws, "decode")
    assert f"computed with numpy 1.26.0; this environment has {environment()['numpy']}" in summary


def summary_markdown(ws: Workspace, stage: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from idtprior.runtime.artifacts import artifact_key

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[artifact_key(ws, stage, "summary")])), sort=ArtifactSort.CREATED_DESC)
    return found[0].data
