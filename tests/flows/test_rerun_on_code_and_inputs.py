"""Reruns that follow the behaviour versions and the imported IDT files, on the real Prefect engine: an edit of gmm.py
reruns nothing, a bump of the codebook's behaviour version reruns the codebook, the encoding and the clusters but not
ingest or the IDT sample; an ``IDTParams`` field that no config sets reruns the IDT stages; a replaced
reference-release IDT file reruns its own chunk, and the codebook sample is drawn from those files."""

import dataclasses

import numpy as np
import pytest

from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.runtime import codeprint
from idtprior.stages import idt as idt_tasks
from idtprior.stages.encode import read_sketches
from idtprior.stages.fit_codebook import BEHAVIOUR, read_codebook
from idtprior.stages.idt import choose_sample, read_sample
from idtprior.stages.registry import expected_fingerprints
from idtprior.storage import Workspace, chunk_of
from idtprior.storage.status import workspace_status
from idtprior.video.idt.textformat import read_idt_text, write_idt_text
from idtprior.video.io import write_video
from idtprior_testutils import moving_square_frames

pytestmark = pytest.mark.usefixtures("prefect_engine")


def make_videos(folder, n: int, frames: int = 24):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_video(folder / f"clip{i:03d}.mp4", moving_square_frames(frames, seed=i), fps=25,
                    options={"preset": "ultrafast"})


def created(ws: Workspace, stage: str) -> dict[str, float]:
    return {c: r.created for c, r in ws.records(stage).items()}


def redone(before: dict[str, dict], ws: Workspace) -> dict[str, set[str]]:
    """Per stage, the chunks whose record was committed again since ``before``."""
    return {s: {c for c, t in created(ws, s).items() if before[s].get(c) != t} for s in before}


def edit_function(source: str, function: str) -> str:
    import ast

    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == function)
    lines = source.splitlines()
    lines.insert(node.end_lineno, " " * node.body[0].col_offset + "_edited = None  # a simulated edit")
    return "\n".join(lines) + "\n"


def test_a_version_bump_and_an_idt_params_field_rerun_the_stages_that_use_them_an_edit_does_not(tmp_path,
                                                                                                 monkeypatch):
    make_videos(tmp_path / "videos", 3)
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "ingest": {"source": str(tmp_path / "videos"), "num_chunks": 2},
        "dask": {"n_workers": 0}, "idt": {"sample_videos": 3, "sample_rows": 1000},
        "codebook": {"gmm_components": 4, "sketch_dim": 32, "gmm_iters": 5}, "cluster": {"k": 2, "runs": 1}})
    ws = Workspace(cfg.workspace)
    stages = ["ingest", "idt", "fit_codebook", "encode", "cluster"]
    pretrain_pipeline(cfg, stages=stages, progress=False)
    before = {s: created(ws, s) for s in stages}
    assert all(before[s] for s in stages)
    all_chunks = {s: set(before[s]) for s in stages}

    real = codeprint.module_source
    gmm = edit_function(real("idtprior.encoding.gmm"), "fit_gmm")
    monkeypatch.setattr(codeprint, "module_source", lambda name: gmm if name == "idtprior.encoding.gmm" else real(name))
    assert codeprint.code_fingerprint("fit_codebook") != codeprint.pins()["fit_codebook"]["fingerprint"]
    # code moved, version did not (the pin test's business): a run would find every chunk current
    checks = {st.stage: st.check for st in workspace_status(ws, tuple(stages), expected_fingerprints(cfg, ws))}
    assert checks == {s: "up to date" for s in stages}
    monkeypatch.setitem(BEHAVIOUR, "fit_codebook", BEHAVIOUR["fit_codebook"] + 1)
    pretrain_pipeline(cfg, stages=stages, progress=False)
    again = redone(before, ws)
    assert again == {s: all_chunks[s] if s in ("fit_codebook", "encode", "cluster") else set() for s in stages}

    before = {s: created(ws, s) for s in stages}
    plain = idt_tasks.idt_params  # a field of the core's parameters that IDTConfig does not set
    monkeypatch.setattr(idt_tasks, "idt_params", lambda c: dataclasses.replace(plain(c), max_dis=19.0))
    pretrain_pipeline(cfg, stages=["encode"], progress=False)  # encode keys on it by itself
    assert redone(before, ws) == {s: all_chunks[s] if s == "encode" else set() for s in stages}
    pretrain_pipeline(cfg, stages=stages, progress=False)
    # so does the sample; the codebook, the encoding (again) and the clusters follow their inputs
    assert redone(before, ws) == {s: all_chunks[s] if s != "ingest" else set() for s in stages}


def idt_rows(seed: int, n: int = 40) -> np.ndarray:
    """(n, 436) rows in the reference release's layout: an integer end frame, then values in [0, 1)."""
    rng = np.random.default_rng(seed)
    rows = rng.random((n, 436))
    rows[:, 0] = rng.integers(15, 100, n)
    return rows


def test_imported_idt_files_are_the_codebook_sample_and_a_replaced_file_reruns_its_chunk(tmp_path):
    make_videos(tmp_path / "videos", 4, frames=4)  # never decoded: the rows come from the files
    text = tmp_path / "idt"
    text.mkdir()
    for i in range(4):
        write_idt_text(text / f"clip{i:03d}.txt", idt_rows(i))
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "ingest": {"source": str(tmp_path / "videos"), "num_chunks": 4},
        "dask": {"n_workers": 0}, "idt": {"sample_videos": 2, "sample_rows": 1000},
        "encode": {"idt_text_folder": str(text)},
        "codebook": {"gmm_components": 4, "sketch_dim": 32, "gmm_iters": 5}})
    ws = Workspace(cfg.workspace)
    stages = ["ingest", "idt", "fit_codebook", "encode"]
    pretrain_pipeline(cfg, stages=stages, progress=False)

    ids = [f"clip{i:03d}" for i in range(4)]
    sampled = sorted(choose_sample(ids, 2, cfg.idt.seed))
    stored = {v: np.asarray(ws.chunk_group("idt", c, r.version)[v][:]) for c, r in ws.records("idt").items()
              for v in r.videos}
    assert sorted(stored) == sampled
    for v in sampled:  # every row of the imported file (fewer than sample_rows), as float32
        np.testing.assert_array_equal(stored[v], read_idt_text(text / f"{v}.txt").astype(np.float32))
    sample = read_sample(ws)
    book_info = ws.read_record("fit_codebook", "all").videos["codebook"]
    assert len(sample) == 80 and book_info["rows"] == 80
    # 80 rows for 4 components: the stage records (and its summary shows) the small-sample warning with the numbers
    assert "4 components fitted on 80 sample rows (20.0 rows per component" in book_info["warning"]
    assert read_codebook(ws).fv_dim > 0

    other = next(v for v in ids if v not in sampled)
    sketches, valid = read_sketches(ws, ids)
    assert valid.all()
    before = {s: created(ws, s) for s in stages}
    write_idt_text(text / f"{other}.txt", idt_rows(100 + ids.index(other)))  # replaced: same name, new rows
    pretrain_pipeline(cfg, stages=stages, progress=False)
    assert redone(before, ws) == {"ingest": set(), "idt": set(), "fit_codebook": set(),
                                  "encode": {chunk_of(other, 4)}}
    after, _ = read_sketches(ws, ids)
    for i, v in enumerate(ids):  # its sketch changed, no other did
        assert np.array_equal(after[i], sketches[i]) == (v != other), v

    before = {s: created(ws, s) for s in stages}
    picked = sampled[0]
    new_rows = idt_rows(200, n=30)
    write_idt_text(text / f"{picked}.txt", new_rows)  # a sampled video's file: its sample chunk reruns too
    pretrain_pipeline(cfg, stages=["idt"], progress=False)
    assert redone(before, ws)["idt"] == {chunk_of(picked, 4)}
    rec = ws.read_record("idt", chunk_of(picked, 4))
    np.testing.assert_array_equal(ws.chunk_group("idt", chunk_of(picked, 4), rec.version)[picked][:],
                                  read_idt_text(text / f"{picked}.txt").astype(np.float32))
    assert len(read_sample(ws)) == 70
