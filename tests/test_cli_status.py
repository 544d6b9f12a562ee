"""``idtprior status``: whole-dataset stages shown done with their time and fingerprint; ``--config`` says which
stages a run with that config would redo (real Prefect engine, real videos)."""

import re
from pathlib import Path

import pytest
import yaml

from idtprior_testutils import moving_square_frames
from idtprior.cli import main
from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.storage import Workspace, read_manifest
from idtprior.video.io import write_video
from datetime import UTC

pytestmark = pytest.mark.usefixtures("prefect_engine")


def _status(capsys, *args) -> dict[str, str]:
    assert main(["status", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {m.group(1): m.group(2) for m in (re.match(r"  (\w+) +(.*)", ln) for ln in lines) if m}


def _second_read(ws):
    raise AssertionError("the manifest read a second time")


def test_status_shows_whole_dataset_stages_done_and_what_a_config_would_redo(tmp_path, capsys, monkeypatch):
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(4):
        write_video(src / f"clip{i}.mp4", moving_square_frames(24, seed=i), fps=25, options={"preset": "ultrafast"})
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode", "idt", "fit_codebook"],
        "dask": {"n_workers": 0}, "ingest": {"source": str(src), "num_chunks": 2}, "decode": {"short_side": 32},
        "idt": {"sample_videos": 4, "sample_rows": 50, "scale_num": 1},
        "codebook": {"gmm_components": 2, "gmm_iters": 5, "sketch_dim": 16}})
    pretrain_pipeline(cfg, progress=False)
    ws = Workspace(cfg.workspace)
    book = ws.read_record("fit_codebook", "all")
    n = len({r.chunk for r in read_manifest(ws)})

    lines = _status(capsys, ws.url)
    assert lines["ingest"] == f"chunks {n}/{n}  videos ok 4  failed 0"
    iso = re.escape(_iso(book.created))
    took = f"  {book.seconds:.1f} s" if book.seconds else ""
    assert re.fullmatch(rf"done {iso}  fingerprint {book.fingerprint[:12]}{took}", lines["fit_codebook"])
    assert lines["cluster"] == "not run" and lines["pretrain_ir"] == "not run"
    with monkeypatch.context() as m:  # the command reads the manifest once (235k rows: over a second a read)
        m.setattr("idtprior.storage.status.read_manifest", _second_read)
        assert _status(capsys, ws.url) == lines

    files_before = _tree(ws)
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    lines = _status(capsys, ws.url, "--config", str(same))
    for stage in ("ingest", "decode", "idt", "fit_codebook"):
        assert lines[stage].endswith("[up to date]"), lines[stage]
    assert lines["cluster"].endswith("[not checked: not one of the config's stages]")

    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(cfg.with_updates(decode={"short_side": 24}).model_dump(mode="json")))
    lines = _status(capsys, ws.url, "--config", str(other))
    assert lines["ingest"].endswith("[up to date]") and lines["idt"].endswith("[up to date]")
    assert lines["decode"].endswith(f"[out of date: {n} of {n} chunks keyed differently]"), lines["decode"]
    assert lines["fit_codebook"].endswith("[up to date]")

    # a codebook setting: the codebook is out of date; encode, never run, is planned from the workspace's codebook
    third = tmp_path / "third.yaml"
    third.write_text(yaml.safe_dump(cfg.with_updates(stages=["ingest", "decode", "idt", "fit_codebook", "encode"],
                                                     codebook={"gmm_components": 3}).model_dump(mode="json")))
    lines = _status(capsys, ws.url, "--config", str(third))
    assert lines["fit_codebook"].endswith("[out of date: 1 of 1 chunks keyed differently]"), lines["fit_codebook"]
    assert lines["encode"] == f"chunks 0/{n}  videos ok 0  failed 0  [not run]"

    # a new chunking: ingest is out of date, and so is every stage keyed on what it will rewrite
    fourth = tmp_path / "fourth.yaml"
    fourth.write_text(yaml.safe_dump(cfg.with_updates(ingest={"num_chunks": 3}).model_dump(mode="json")))
    lines = _status(capsys, ws.url, "--config", str(fourth))
    assert re.search(r"\[out of date: \d chunks not run; \d chunks no longer planned\]$", lines["ingest"]), lines["ingest"]
    assert lines["decode"].endswith("[out of date: ingest out of date]"), lines["decode"]
    assert lines["idt"].endswith("[out of date: ingest out of date]"), lines["idt"]
    assert lines["fit_codebook"].endswith("[out of date: idt out of date]"), lines["fit_codebook"]
    assert _tree(ws) == files_before  # status --config ran and wrote nothing

    # a training stage: checked against its record key (training + evaluation); an evaluation setting re-evaluates
    trained = cfg.with_updates(stages=["ingest", "decode", "pretrain_ir"], pretrain_ir={"epochs": 1}, pretrain={
        "width": 0.125, "embed_dim": 16, "clip_length": 4, "crop_size": 32, "batch_size": 4, "negatives": 8,
        "num_workers": 0, "accelerator": "cpu"})
    pretrain_pipeline(trained, stages=["pretrain_ir"], progress=False)
    fifth = tmp_path / "fifth.yaml"
    fifth.write_text(yaml.safe_dump(trained.model_dump(mode="json")))
    assert _status(capsys, ws.url, "--config", str(fifth))["pretrain_ir"].endswith("[up to date]")
    fifth.write_text(yaml.safe_dump(trained.with_updates(pretrain={"knn_k": 3}).model_dump(mode="json")))
    lines = _status(capsys, ws.url, "--config", str(fifth))
    assert lines["pretrain_ir"].endswith("[out of date: 1 of 1 chunks keyed differently]"), lines["pretrain_ir"]

def _tree(ws: Workspace) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in Path(ws.root).rglob("*") if p.is_file()}


def _iso(t: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def test_status_of_the_baseline_stages_and_of_evaluates_named_records(tmp_path):
    from idtprior.storage import ChunkRecord
    from idtprior.storage.status import workspace_status

    ws = Workspace(tmp_path / "ws")
    ws.commit(ChunkRecord("supervised", "all", "fp-sup", "", {"model": {"status": "ok"}}))
    ws.commit(ChunkRecord("pretrain_la_bank", "all", "fp-bank-old", "", {"model": {"status": "ok"}}))
    for name, fp in (("pretrain_ir.finetune.16", "a"), ("pretrain_ir.probe.16", "b"), ("scratch.knn.8", "old")):
        ws.commit(ChunkRecord("evaluate", name, fp, "", {"result": {"status": "ok"}}))
    stages = ("supervised", "pretrain_la_bank", "evaluate")
    expected = {"supervised": {"all": "fp-sup"}, "pretrain_la_bank": {"all": "fp-bank"},
                "evaluate": {"pretrain_ir.finetune.16": "a", "pretrain_ir.probe.16": "b"}}
    st = {s.stage: s for s in workspace_status(ws, stages, expected)}
    assert st["supervised"].whole and st["supervised"].done and st["supervised"].check == "up to date"
    assert st["pretrain_la_bank"].whole and st["pretrain_la_bank"].check == "out of date: 1 of 1 chunks keyed differently"
    # a network it evaluates would retrain: so would its evaluations
    assert st["evaluate"].check == "out of date: pretrain_la_bank out of date"
    expected["pretrain_la_bank"] = {"all": "fp-bank-old"}
    st = {s.stage: s for s in workspace_status(ws, stages, expected)}
    # an evaluation the config no longer asks for (scratch at 8 frames) is kept, not stale
    ev = st["evaluate"]
    assert (ev.chunks_done, ev.chunks_expected, ev.check) == (2, 2, "up to date")
    expected["evaluate"] = {**expected["evaluate"], "pretrain_ir.knn.16": "c", "pretrain_ir.probe.16": "b2"}
    ev = {s.stage: s for s in workspace_status(ws, stages, expected)}["evaluate"]
    assert (ev.chunks_done, ev.chunks_expected) == (2, 3)
    assert ev.check == "out of date: 1 of 3 chunks keyed differently; 1 chunks not run"
    assert {s.stage: s.chunks_done for s in workspace_status(ws, ("evaluate",))} == {"evaluate": 3}
