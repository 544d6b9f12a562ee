"""The decoded frames' JPEG codec (``decode.codec: jpeg``): the chunk format round-trips to exactly what the JPEG
decoder gives for each frame, clip reads from a real Zarr store equal that reference, bad input is refused with the
value named, and the decode stage stores it under its own key without touching the zstd workspaces' keys."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr

from idtprior.config import PipelineConfig
from idtprior.config.stages import DecodeConfig
from idtprior.datasets.synthetic import textured_pan_video
from idtprior.storage import FrameStore, Workspace, write_frames
from idtprior.storage.integrity import IntegrityError
from idtprior.video.framecodec import JpegFrames, decode_frames, encode_frames


def jpeg_reference(frames: np.ndarray, quality: int) -> np.ndarray:
    """Each frame through OpenCV's JPEG encoder and decoder on its own."""
    out = []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", f[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, quality])
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return np.stack(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    # a camera pan with moving objects, at the decode stage's short side 128
    return np.stack([cv2.resize(f, (170, 128), interpolation=cv2.INTER_AREA) for f in textured_pan_video(40, 120, 160)])


def test_the_chunk_format_round_trips_to_the_jpeg_decoders_frames(frames):
    for quality in (50, 90):
        got = decode_frames(encode_frames(frames[:16], quality), (16, 128, 170, 3))
        np.testing.assert_array_equal(got, jpeg_reference(frames[:16], quality))
    assert psnr(got, frames[:16]) > 35  # quality 90 on a textured pan


def test_clip_reads_from_a_jpeg_store_equal_the_reference_and_a_damaged_chunk_is_an_integrity_error(tmp_path, frames):
    group = zarr.open_group(str(tmp_path / "frames.zarr"), mode="w")
    n, h, w = write_frames(group, "pan", iter(frames), time_chunk=16, fps=25.0, serializer=JpegFrames(90))
    assert (n, h, w) == (40, 128, 170)
    arr = zarr.open_group(str(tmp_path / "frames.zarr"), mode="r")["pan"]
    ref = jpeg_reference(frames, 90)
    for start in (0, 9, 24):  # within a chunk, across two, the last partial chunk
        np.testing.assert_array_equal(arr[start:start + 16], ref[start:start + 16])


def test_bad_settings_and_bad_bytes_are_refused_with_the_value_named(frames):
    with pytest.raises(ValueError, match="quality must be in \\[1, 100\\], got 0"):
        JpegFrames(0)
    with pytest.raises(ValueError, match=r"expected \(T, H, W, 3\) uint8 RGB, got \(2, 8, 8\) uint8"):
        encode_frames(np.zeros((2, 8, 8), np.uint8), 90)
    with pytest.raises(ValueError, match="does not start with b'IDTJ'"):
        decode_frames(b"not a chunk", (1, 8, 8, 3))
    data = encode_frames(frames[:4], 90)
    with pytest.raises(ValueError, match="the chunk holds 4 frames, its array's chunks 16"):
        decode_frames(data, (16, 128, 170, 3))
    with pytest.raises(ValueError, match="decoded_frames|jpeg_quality"):
        DecodeConfig(jpeg_quality=101)
    with pytest.raises(ValueError, match="codec"):
        DecodeConfig(codec="webp")


def test_the_zstd_key_is_the_one_from_before_the_codec_setting():
    # the hash of DecodeConfig() before `codec` existed: workspaces decoded then keep their decode and training keys
    assert DecodeConfig().config_hash() == DecodeConfig(jpeg_quality=50).config_hash() == "018f6a6347fa3c9c"
    assert DecodeConfig(codec="jpeg").config_hash() != DecodeConfig(codec="jpeg", jpeg_quality=80).config_hash()


@pytest.mark.usefixtures("prefect_engine")
def test_the_decode_stage_stores_jpeg_under_its_own_key(tmp_path):
    from idtprior.flows.pipeline import pretrain_pipeline
    from idtprior.video.io import iter_frames, write_video

    src = tmp_path / "videos"
    src.mkdir()
    for i in range(2):
        write_video(src / f"pan{i}.mp4", textured_pan_video(20, 120, 160, seed=i), fps=25,
                    options={"crf": "12", "preset": "ultrafast"})
    cfg = PipelineConfig.model_validate({"workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode"],
                                         "ingest": {"source": str(src), "num_chunks": 1}, "dask": {"n_workers": 0}})
    pretrain_pipeline(cfg, progress=False)
    ws = Workspace(cfg.workspace)
    zstd = ws.read_record("decode", "0000-of-0001")
    lossless = {v: FrameStore(ws).read_clip(v, 0, 20) for v in ("pan0", "pan1")}
    jpeg_cfg = cfg.with_updates(decode={"codec": "jpeg", "jpeg_quality": 85})
    pretrain_pipeline(jpeg_cfg, progress=False)
    rec = ws.read_record("decode", "0000-of-0001")
    assert rec.fingerprint != zstd.fingerprint and rec.n_ok == 2
    store = FrameStore(ws)
    for v in ("pan0", "pan1"):
        decoded = np.stack(list(iter_frames(src / f"{v}.mp4", short_side=128)))
        np.testing.assert_array_equal(decoded, lossless[v])  # zstd: the decoded video exactly
        np.testing.assert_array_equal(store.read_clip(v, 2, 16), jpeg_reference(decoded, 85)[2:18])
    # a damaged JPEG chunk is an integrity error naming the chunk, never wrong frames
    path = next(p for p in (Path(ws.path("decode.zarr", "0000-of-0001", rec.version, "pan1")) / "c").rglob("*")
                if p.is_file())
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="pan1"):
        FrameStore(ws).read_clip("pan1", 0, 16)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_engine")
def test_a_training_stage_reads_a_jpeg_store_through_its_loader_workers(tmp_path):
    """The codec is known in the loader's worker processes (it registers on import of the frame store), and a training
    stage keys on the codec: zstd and JPEG frames train under different keys."""
    from idtprior.flows.pipeline import pretrain_pipeline
    from idtprior.video.io import write_video

    src = tmp_path / "videos"
    src.mkdir()
    for i in range(6):
        write_video(src / f"pan{i}.mp4", textured_pan_video(24, 96, 128, seed=i), fps=25, options={"preset": "ultrafast"})
    base = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode", "pretrain_ir"],
        "ingest": {"source": str(src), "num_chunks": 1}, "dask": {"n_workers": 0}, "decode": {"short_side": 48},
        "pretrain": {"width": 0.125, "embed_dim": 16, "clip_length": 4, "crop_size": 32, "batch_size": 3,
                     "negatives": 4, "num_workers": 2, "accelerator": "cpu"},
        "pretrain_ir": {"epochs": 1}})
    keys = {}
    for codec in ("zstd", "jpeg"):
        result = pretrain_pipeline(base.with_updates(decode={"codec": codec}), progress=False)
        assert result["pretrain_ir"]["epochs"] == 1
        keys[codec] = Workspace(base.workspace).read_record("pretrain_ir", "all").fingerprint
    assert keys["zstd"] != keys["jpeg"]
