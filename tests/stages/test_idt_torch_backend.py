"""The torch backend of IDT in the pipeline (issue 16): ``idt.backend: torch`` runs the idt and encode stages' videos a
batch at a time through the batched extractor; its keys and code are its own; a bad video fails alone.

Real videos written with PyAV, a real Zarr workspace; the torch extractor runs on the CPU here."""

import numpy as np
import pytest
import torch

from idtprior.config.stages import CodebookConfig, EncodeConfig, IDTConfig
from idtprior.datasets.synthetic import textured_pan_video
from idtprior.encoding import fit_codebook
from idtprior.runtime.errors import TransientError
from idtprior.runtime.worker import run_chunk
from idtprior.stages import idt as idt_tasks
from idtprior.stages.encode import EncodeJob, _write_sketches, encode_batch, encode_one
from idtprior.stages.fit_codebook import codebook_params
from idtprior.stages.idt import Extraction, SampleJob, idt_params, sample_batch, sample_one, video_idt
from idtprior.storage import Workspace
from idtprior.video.io import write_video

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_cache_keys_hold_what_changes_the_rows_and_nothing_else():
    cpu = IDTConfig().config_hash()
    # execution settings, and the torch backend's settings under the CPU backend: the same rows, the same key (so
    # workspaces computed before the torch backend existed keep their keys)
    assert IDTConfig(device="cuda:1", batch_videos=3, torch_homography="device").config_hash() == cpu
    torch_key = IDTConfig(backend="torch").config_hash()
    assert torch_key != cpu
    assert IDTConfig(backend="torch", device="cpu", batch_videos=2).config_hash() == torch_key
    assert IDTConfig(backend="torch", torch_homography="device").config_hash() != torch_key  # other fits, other rows
    assert IDTConfig(backend="torch", quality=0.01).config_hash() != torch_key


def test_the_stage_refuses_a_device_the_machine_lacks_before_any_video_runs(caplog):
    from idtprior.config.base import ConfigError
    from idtprior.config import PipelineConfig
    from idtprior.stages.common import check_idt_backend

    cfg = PipelineConfig.model_validate({"idt": {"backend": "torch", "device": f"cuda:{torch.cuda.device_count()}"}})
    with pytest.raises(ConfigError, match=r"encode: idt.device 'cuda:\d+': this machine has \d+ CUDA devices"):
        check_idt_backend("encode", cfg)
    with pytest.raises(ConfigError, match="idt.device 'tpu7' is not a torch device"):
        check_idt_backend("idt", cfg.with_updates(idt={"device": "tpu7"}))
    check_idt_backend("idt", cfg.with_updates(idt={"backend": "cpu"}))  # the CPU backend never looks at the device
    check_idt_backend("idt", cfg.with_updates(idt={"device": "cpu"}))
    assert "runs on the CPU here" in caplog.text


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two generated camera pans with moving objects (96x128; 24 and 20 frames), written with libx264, and a file that
    is not a video."""
    folder = tmp_path_factory.mktemp("pans")
    paths = {}
    for i, n in enumerate((24, 20)):
        path = folder / f"pan{i}.mp4"
        write_video(path, textured_pan_video(n, 96, 128, seed=i + 1), fps=25, codec="libx264",
                    options={"crf": "10", "preset": "ultrafast"})
        paths[f"pan{i}"] = str(path)
    bad = folder / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all" * 20)
    paths["broken"] = str(bad)
    return paths


def run(ws: Workspace, stage: str, per_video, args: dict, batch_size: int = 0, finish=None):
    return run_chunk(ws.url, stage, "0000-of-0001", f"{stage}-{batch_size}", args, per_video, progress=False,
                     batch_size=batch_size, finish=finish)


def test_encode_in_batches_equals_the_cpu_extractor_and_a_bad_video_fails_alone(tmp_path, videos):
    idt = IDTConfig(backend="torch", device="cpu", batch_videos=2)
    good = [v for v in videos if v != "broken"]
    sample = np.concatenate([video_idt(videos[v], idt_params(IDTConfig()))[:, 10:] for v in good])
    book = fit_codebook(sample, codebook_params(CodebookConfig(gmm_components=4, sketch_dim=64)))
    enc = EncodeConfig()
    cpu_ws, torch_ws = Workspace(str(tmp_path / "cpu")), Workspace(str(tmp_path / "torch"))
    cpu = run(cpu_ws, "encode", encode_one, {v: (p, EncodeJob.of(IDTConfig(), enc, book)) for v, p in videos.items()},
              finish=_write_sketches)
    ours = run(torch_ws, "encode", encode_batch, {v: (p, EncodeJob.of(idt, enc, book)) for v, p in videos.items()},
               batch_size=2, finish=_write_sketches)  # batches [broken, pan0], [pan1]
    assert ours.videos["broken"]["status"] == "failed" and cpu.videos["broken"]["status"] == "failed"
    assert ours.videos["broken"]["error"] == cpu.videos["broken"]["error"]  # the same decode error, naming the file
    for v in good:
        assert ours.videos[v]["status"] == "ok" and ours.videos[v]["valid"]
        n_cpu, n_ours = cpu.videos[v]["trajectories"], ours.videos[v]["trajectories"]
        assert n_cpu > 20 and abs(n_ours / n_cpu - 1) <= 0.02, (v, n_ours, n_cpu)
    a = cpu_ws.chunk_group("encode", "0000-of-0001", cpu.version)["sketches"]
    b = torch_ws.chunk_group("encode", "0000-of-0001", ours.version)["sketches"]
    assert list(a.attrs["video_ids"]) == list(b.attrs["video_ids"]) == sorted(good)
    a, b = np.asarray(a[:]), np.asarray(b[:])
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosines.min() >= 0.99, cosines


@pytest.mark.slow
def test_the_idt_sample_in_batches_keeps_the_cpu_extractors_seeded_rows(tmp_path, videos):
    cfg = IDTConfig(backend="torch", device="cpu", batch_videos=2, sample_rows=40)
    good = {v: p for v, p in videos.items() if v != "broken"}
    cpu_ws, torch_ws = Workspace(str(tmp_path / "cpu")), Workspace(str(tmp_path / "torch"))
    cpu = run(cpu_ws, "idt", sample_one, {v: (p, SampleJob.of(IDTConfig(sample_rows=40))) for v, p in good.items()})
    ours = run(torch_ws, "idt", sample_batch, {v: (p, SampleJob.of(cfg)) for v, p in good.items()}, batch_size=2)
    compared = []
    for v in good:
        assert ours.videos[v]["kept"] == cpu.videos[v]["kept"] == 40
        mine = np.asarray(torch_ws.chunk_group("idt", "0000-of-0001", ours.version)[v][:])
        ref = np.asarray(cpu_ws.chunk_group("idt", "0000-of-0001", cpu.version)[v][:])
        n_cpu, n_ours = cpu.videos[v]["trajectories"], ours.videos[v]["trajectories"]
        if n_ours == n_cpu:  # the same seeded draw of the same rows
            np.testing.assert_allclose(mine, ref, atol=0.02)
            compared.append(v)
        else:  # float32 rounding kept a trajectory more or less: the seeded draw picks other rows, of the same video
            assert abs(n_ours / n_cpu - 1) <= 0.02, (v, n_ours, n_cpu)
            assert mine.shape == ref.shape
    assert compared, "no video had the CPU extractor's trajectory count: the seeded rows were never compared"


def test_a_video_that_fails_the_batched_call_fails_alone_and_running_out_of_memory_fails_the_chunk(
        tmp_path, videos, monkeypatch):
    from idtprior.video.idt import torch_extract

    real = torch_extract.extract_idt_batch
    poisoned = {"frames": None}

    def extractor(frames, *args, **kwargs):  # the real extractor, which refuses one video's frames
        if poisoned["frames"] is not None and any(f[0] is poisoned["frames"] for f in frames):
            raise poisoned["error"]
        return real(frames, *args, **kwargs)

    monkeypatch.setattr(torch_extract, "extract_idt_batch", extractor)
    cfg = IDTConfig(backend="torch", device="cpu", batch_videos=2)
    good = {v: p for v, p in videos.items() if v != "broken"}
    decoded = idt_tasks.video_io.iter_frames

    def frames_of(path, **kw):  # marks pan1's first decoded frame (by identity): the extractor refuses its video
        frames = list(decoded(path, **kw))
        if path == good["pan1"]:
            poisoned["frames"] = frames[0]
        return iter(frames)

    monkeypatch.setattr(idt_tasks.video_io, "iter_frames", frames_of)
    poisoned["error"] = ValueError("pan1: refused")
    rows = idt_tasks.batch_idt(good, Extraction.of(cfg), {})
    assert isinstance(rows["pan1"], ValueError) and str(rows["pan1"]) == "pan1: refused"
    # the same trajectories as the CPU extractor's, descriptors to float32 rounding (of 498k values, 24 differ by
    # more than 0.005, none by 0.01)
    np.testing.assert_allclose(rows["pan0"], video_idt(good["pan0"], idt_params(IDTConfig())), atol=0.02)

    poisoned["error"] = torch.OutOfMemoryError("CUDA out of memory (injected)")
    ws = Workspace(str(tmp_path / "ws"))
    with pytest.raises(TransientError, match=r"ran out of memory on cpu with 2 videos .*lower idt.batch_videos"):
        run(ws, "idt", sample_batch, {v: (p, SampleJob.of(cfg)) for v, p in good.items()}, batch_size=2)
    assert ws.read_record("idt", "0000-of-0001") is None  # no video marked failed under the chunk's key
