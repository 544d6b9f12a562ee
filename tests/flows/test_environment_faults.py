"""Faults of the environment are not faults of the video (``runtime.errors.environment_fault``), and recorded failures
can be tried again (``idtprior run --retry-failed``). Each fault is injected into a real stage run on the real
Prefect engine: a MemoryError in every video, a CuPy out-of-memory error in one video, a file briefly missing and one
that stays missing, a boxes group deleted during a run, a video whose detection failed."""

import re
import shutil
from pathlib import Path

import pytest

from idtprior.cli import main
from idtprior.config import PipelineConfig, load_config
from idtprior.datasets.synthetic import make_demo_data
from idtprior.flows.deployments import pretrain_ui
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.runtime import worker
from idtprior.runtime.errors import EnvironmentFault, environment_fault, is_transient
from idtprior.runtime.worker import RETRY_DELAYS_ENV, retry_delays
from idtprior.stages import decode, detect as detect_tasks, encode as encode_stage, idt
from idtprior.stages.cluster import read_cluster_labels
from idtprior.stages.encode import encode_one
from idtprior.storage import Workspace, read_manifest
from idtprior.storage.integrity import IntegrityError
from idtprior.video.io import VideoError
from idtprior_testutils import write_moving_square_videos

pytestmark = pytest.mark.usefixtures("prefect_engine")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv(RETRY_DELAYS_ENV, "0,0")
    monkeypatch.setattr(worker, "MISSING_RETRY_S", (0.01, 0.01))


def _created(ws: Workspace, stage: str) -> dict[str, float]:
    return {c: r.created for c, r in ws.records(stage).items()}


def _decode_config(tmp_path: Path) -> PipelineConfig:
    write_moving_square_videos(tmp_path / "videos", 4, frames=8)
    return PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode"], "dask": {"n_workers": 0},
        "ingest": {"source": str(tmp_path / "videos"), "num_chunks": 2}, "decode": {"short_side": 16}})


def test_memory_exhausted_in_every_video_is_retried_then_fails_the_stage_naming_it(tmp_path, monkeypatch):
    cfg = _decode_config(tmp_path)
    pretrain_pipeline(cfg, stages=["ingest"], progress=False)
    calls: dict[str, int] = {}

    def no_memory(video_id, *args):
        calls[video_id] = calls.get(video_id, 0) + 1
        raise MemoryError("cannot allocate 2.3 GiB")

    monkeypatch.setattr(decode, "decode_one", no_memory)
    with pytest.raises(RuntimeError) as info:
        pretrain_pipeline(cfg, stages=["decode"], progress=False)
    message = str(info.value)
    assert re.match(r"decode: 2 of 2 chunks failed; first: (\S+): decode \1: every video failed with a fault of the "
                    r"environment, not of the videos", message), message
    assert "out of memory: MemoryError: cannot allocate 2.3 GiB" in message
    assert isinstance(info.value.__cause__, EnvironmentFault)
    # three attempts of each chunk (the first video failed the first two; the last ran every video)
    first = {r.chunk: r.video_id for r in sorted(read_manifest(Workspace(cfg.workspace)), key=lambda r: r.video_id,
                                                 reverse=True)}  # each chunk's first video in id order
    assert all(calls[v] == 3 for v in first.values()) and sum(calls.values()) == 2 * 2 + 4
    ws = Workspace(cfg.workspace)
    assert ws.records("decode") == {}  # nothing committed, no video recorded as failed
    assert all(not r.failed_in for r in read_manifest(ws))


def test_a_missing_file_is_tried_again_and_one_that_stays_missing_is_the_videos_failure(tmp_path, monkeypatch):
    cfg = _decode_config(tmp_path)
    pretrain_pipeline(cfg, stages=["ingest"], progress=False)
    ws = Workspace(cfg.workspace)
    rows = {r.video_id: r for r in read_manifest(ws)}
    real = decode.video_io.iter_frames
    seen: dict[str, int] = {}

    def flaky(path, **kwargs):  # clip001 is back after one retry; clip002 stays missing
        vid = Path(path).stem
        seen[vid] = seen.get(vid, 0) + 1
        if (vid == "clip001" and seen[vid] == 1) or vid == "clip002":
            try:
                open(str(path) + ".gone")
            except FileNotFoundError as e:
                raise VideoError(f"video {path}: cannot open: {e}") from e
        return real(path, **kwargs)

    monkeypatch.setattr(decode.video_io, "iter_frames", flaky)
    counts = pretrain_pipeline(cfg, stages=["decode"], progress=False)["decode"]
    assert (counts["videos_ok"], counts["videos_failed"]) == (3, 1) and "videos_retryable" not in counts
    rec = {v: i for r in ws.records("decode").values() for v, i in r.videos.items()}
    assert rec["clip001"]["status"] == "ok" and seen["clip001"] == 2
    assert rec["clip002"]["status"] == "failed" and seen["clip002"] == 3  # the video's own failure, after 2 retries
    assert "No such file" in rec["clip002"]["error"]

    # the run form's "Retry failed videos: retryable": clip002's failure is its own, nothing recomputed
    monkeypatch.setattr(decode.video_io, "iter_frames", real)
    before = _created(ws, "decode")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(Path(ws.path("config.yaml")).read_text())
    assert pretrain_ui(config=str(config_file), stages=["decode"], retry_failed="retryable",
                       return_state=True).is_completed()
    assert _created(ws, "decode") == before
    # --retry-failed all: exactly clip002's chunk again
    assert main(["run", str(config_file), "--stages", "decode", "--retry-failed", "all"]) == 0
    after = _created(ws, "decode")
    assert {c for c in after if after[c] != before[c]} == {rows["clip002"].chunk}
    assert ws.read_record("decode", rows["clip002"].chunk).videos["clip002"]["status"] == "ok"
    assert not {r.video_id: r for r in read_manifest(ws)}["clip002"].failed_in


class OutOfMemoryError(Exception):
    """CuPy's out-of-memory error, as ``cupy.cuda.memory`` raises it."""


OutOfMemoryError.__module__ = "cupy.cuda.memory"


def test_a_video_that_fails_alone_for_the_device_is_retryable_and_retry_failed_recomputes_it_and_what_read_it(
        tmp_path, monkeypatch):
    make_demo_data(tmp_path / "data", videos_per_class=1, frames=32)
    cfg = load_config(ROOT / "configs" / "demo.yaml").with_updates(
        workspace=str(tmp_path / "ws"), ingest={"source": str(tmp_path / "data" / "splits" / "trainlist01.txt"),
                                                "video_root": str(tmp_path / "data" / "videos"), "num_chunks": 3},
        idt={"sample_videos": 6, "sample_rows": 100}, codebook={"gmm_components": 4, "sketch_dim": 64,
                                                                "gmm_iters": 5},
        cluster={"k": 2, "n_init": 2, "runs": 1}, dask={"n_workers": 0})
    ws = Workspace(cfg.workspace)
    pretrain_pipeline(cfg, stages=["ingest", "idt", "fit_codebook"], progress=False)
    victim = sorted(r.video_id for r in read_manifest(ws))[0]
    real = encode_one

    def device_full(video_id, *args):  # the device is full while this video's Fisher vector is computed
        if video_id == victim:
            raise OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes (allocated so far: 0 bytes)")
        return real(video_id, *args)

    monkeypatch.setattr(encode_stage, "encode_one", device_full)
    counts = pretrain_pipeline(cfg, stages=["encode", "cluster"], progress=False)
    assert counts["encode"]["videos_retryable"] == 1 and counts["encode"]["videos_ok"] == 5
    info = {v: i for r in ws.records("encode").values() for v, i in r.videos.items()}[victim]
    assert info["status"] == "retryable"
    assert info["error"].startswith("out of memory: OutOfMemoryError: Out of memory allocating")
    row = {r.video_id: r for r in read_manifest(ws)}[victim]
    assert row.failed_in == "encode"
    labels, ids = read_cluster_labels(ws)
    assert labels[0][ids.index(victim)] == -1  # no sketch, no cluster

    monkeypatch.undo()  # the device has memory again
    monkeypatch.setenv(RETRY_DELAYS_ENV, "0,0")
    before = {s: _created(ws, s) for s in ("encode", "sketches", "cluster")}
    pretrain_pipeline(cfg, stages=["encode", "cluster"], progress=False, retry_failed="retryable")
    after = {s: _created(ws, s) for s in before}
    # exactly the victim's chunk of encode, then what read it: the assembled sketches and the clusters
    assert {c for c in after["encode"] if after["encode"][c] != before["encode"][c]} == {row.chunk}
    assert after["sketches"] != before["sketches"] and after["cluster"] != before["cluster"]
    rec = ws.read_record("encode", row.chunk)
    assert rec.videos[victim]["status"] == "ok" and rec.retried and rec.content_key != rec.fingerprint
    labels, ids = read_cluster_labels(ws)
    assert labels[0][ids.index(victim)] >= 0
    assert not {r.video_id: r for r in read_manifest(ws)}[victim].failed_in
    again = {s: _created(ws, s) for s in before}
    pretrain_pipeline(cfg, stages=["encode", "cluster"], progress=False)  # a plain rerun: nothing to do
    assert {s: _created(ws, s) for s in before} == again


def test_a_failed_detection_is_never_silent_and_a_boxes_group_deleted_during_a_run_fails_the_chunk(
        tmp_path, monkeypatch, capsys):
    cfg = _decode_config(tmp_path).with_updates(stages=["ingest", "detect", "idt"], detect={"backend": "none"},
                                                idt={"sample_videos": 4, "sample_rows": 50})
    ws = Workspace(cfg.workspace)
    pretrain_pipeline(cfg, stages=["ingest"], progress=False)
    real = detect_tasks.video_boxes

    def one_fails(video_id, path, dcfg):
        if video_id == "clip003":
            raise ValueError("the detector refused clip003's frames")
        return real(video_id, path, dcfg)

    monkeypatch.setattr(detect_tasks, "video_boxes", one_fails)
    pretrain_pipeline(cfg, stages=["detect"], progress=False)
    monkeypatch.setattr(detect_tasks, "video_boxes", real)
    counts = pretrain_pipeline(cfg, stages=["idt"], progress=False)["idt"]
    assert counts["videos_ok"] == 4 and counts["videos_without_boxes"] == 1
    info = {v: i for r in ws.records("idt").values() for v, i in r.videos.items()}
    assert info["clip003"]["no_boxes"] == "detect failed: ValueError: the detector refused clip003's frames"
    assert not any(i.get("no_boxes") for v, i in info.items() if v != "clip003")
    assert main(["status", ws.url]) == 0
    assert "without boxes 1 (their detection failed)" in capsys.readouterr().out

    # a boxes group deleted while the stage runs (the chunk's first video read its boxes, the next finds none)
    rows = sorted(read_manifest(ws), key=lambda r: r.video_id)
    chunk = next(r.chunk for r in rows if r.video_id != "clip003" and  # a chunk whose videos all have boxes
                 all(o.video_id != "clip003" for o in rows if o.chunk == r.chunk))
    pair = [r.video_id for r in rows if r.chunk == chunk]
    det = ws.read_record("detect", chunk)
    real_rows = idt.video_rows

    def delete_the_next(video_id, *args, **kwargs):
        if video_id == pair[0]:
            shutil.rmtree(ws.version_path("detect", chunk, det.version) + f"/{pair[1]}")
        return real_rows(video_id, *args, **kwargs)

    monkeypatch.setattr(idt, "video_rows", delete_the_next)
    before = _created(ws, "idt")
    with pytest.raises(RuntimeError) as failed:
        pretrain_pipeline(cfg.with_updates(idt={"sample_rows": 40}), stages=["idt"], progress=False)
    assert isinstance(failed.value.__cause__, IntegrityError), repr(failed.value.__cause__)
    assert f"detect chunk {chunk} video {pair[1]}: stored data does not match its record" in str(failed.value)
    assert _created(ws, "idt")[chunk] == before[chunk]  # nothing committed for it: the earlier record stands
    assert all(i["status"] == "ok" for r in ws.records("idt").values() for i in r.videos.values())  # none failed


class CudaOutOfMemory(RuntimeError):
    pass


CudaOutOfMemory.__name__ = CudaOutOfMemory.__qualname__ = "OutOfMemoryError"  # torch.OutOfMemoryError's name


@pytest.mark.parametrize("exc, cause", [
    (MemoryError(), "out of memory"),
    (CudaOutOfMemory("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory"),
    (OutOfMemoryError("Out of memory allocating 512 bytes"), "out of memory"),
    (AssertionError("Torch not compiled with CUDA enabled"), "a device or its driver"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "a device or its driver"),
    (OSError(116, "Stale file handle"), "storage unavailable"),
    (OSError(5, "Input/output error"), "storage unavailable"),
    (VideoError("video x: cannot decode"), None),
    (ValueError("bad setting"), None),
    (FileNotFoundError(2, "No such file"), None),
    (RuntimeError("the detector refused the frames"), None),
])
def test_faults_of_the_environment_are_told_from_the_videos(exc, cause):
    assert environment_fault(exc) == cause
    wrapped = VideoError("video x: cannot decode")  # found through the exceptions it was raised from, too
    wrapped.__cause__ = exc
    assert environment_fault(wrapped) == cause
    if cause is not None:
        assert is_transient(exc)


def test_bad_retry_settings_name_the_value(tmp_path, monkeypatch):
    from idtprior.config.base import ConfigError
    from idtprior.runtime.records import reopen_failures

    for spec in ("2", "a,b", "-1,2"):
        monkeypatch.setenv(RETRY_DELAYS_ENV, spec)
        with pytest.raises(ValueError, match=rf"IDTPRIOR_RETRY_DELAYS='{re.escape(spec)}': expected two numbers"):
            retry_delays()
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(ConfigError, match=r"--retry-failed 'some': expected one of \['retryable', 'all'\]"):
        reopen_failures(ws, "decode", "some")
    assert not (tmp_path / "ws" / "locks").exists() or not list((tmp_path / "ws" / "locks").iterdir())
