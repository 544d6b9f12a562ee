import tracemalloc

import numpy as np
import pytest

from idtprior_testutils import moving_square_frames, write_audio_only
from idtprior.storage import Workspace, write_frames
from idtprior.video.io import VideoError, iter_frames, probe_video, resized_shape


@pytest.mark.parametrize("codec,options", [("ffv1", None), ("libx264rgb", {"crf": "0"})])
def test_lossless_video_decodes_to_exactly_the_frames_written(write_video, codec, options):
    frames = moving_square_frames(20)
    path = write_video(f"lossless-{codec}.mkv", frames, codec=codec, options=options)
    decoded = np.stack(list(iter_frames(path)))
    np.testing.assert_array_equal(decoded, frames)
    info = probe_video(path)
    assert (info.width, info.height, info.fps) == (64, 48, 25.0)


def test_probe_facts_of_an_h264_file(write_video):
    path = write_video("clip.mp4", moving_square_frames(50), fps=30)
    info = probe_video(path)
    assert (info.frame_count, info.width, info.height, info.codec) == (50, 64, 48, "h264")
    assert info.fps == pytest.approx(30.0) and info.duration == pytest.approx(50 / 30, abs=0.05)


def test_resize_keeps_the_aspect_ratio(write_video):
    assert resized_shape(1080, 1920, short_side=128) == (128, 228)
    assert resized_shape(120, 160, short_side=None, max_side=80) == (60, 80)
    path = write_video("big.mp4", moving_square_frames(3, h=96, w=128))
    assert next(iter_frames(path, short_side=48)).shape == (48, 64, 3)


def test_bad_files_give_errors_that_name_the_file(tmp_path, write_video):
    good = write_video("good.mp4", moving_square_frames(30))
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.avi").write_text("this is not a video\n" * 50)
    data = good.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 255, 5000, np.uint8).tobytes())
    write_audio_only(tmp_path / "audio.m4a")
    expected = {"empty.mp4": "empty", "text.avi": "", "truncated.mp4": "", "garbage.mp4": "",
                "audio.m4a": "no video stream"}
    for name, words in expected.items():
        with pytest.raises(VideoError, match=f"video .*{name}: .*{words}"):
            probe_video(tmp_path / name)


def test_decode_streams_a_long_video_without_holding_it(tmp_path, write_video):
    """600 frames at 320x240 (138 MB of RGB) stream into Zarr with a few time-chunks of peak Python memory."""
    n, h, w = 600, 240, 320
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    path = write_video("long.mp4", (np.roll(bg, t, axis=1) for t in range(n)), options={"preset": "ultrafast"})
    ws = Workspace(tmp_path / "ws")
    group = ws.new_version("decode", "c")[1]
    tracemalloc.start()
    frames, fh, fw = write_frames(group, "long", iter_frames(path, short_side=120), time_chunk=16, fps=25)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    decoded_bytes = n * h * w * 3  # what holding the decoded video would cost
    assert (frames, fh, fw) == (n, 120, 160)
    assert peak < decoded_bytes / 10, f"peak {peak} bytes vs {decoded_bytes} bytes of decoded frames"


def test_prefetched_frames_come_in_order_and_equal_the_decoded_ones(write_video):
    from idtprior.video.io import prefetched

    frames = moving_square_frames(12, 32, 48)
    path = write_video("sq.avi", frames, codec="ffv1")
    got = list(prefetched(iter_frames(path), depth=2))
    assert len(got) == 12
    for a, b in zip(got, frames):
        np.testing.assert_array_equal(a, b)


def test_prefetched_raises_the_readers_error_at_its_item_and_stops_when_closed():
    import threading

    from idtprior.video.io import prefetched

    def broken():
        yield 1
        yield 2
        raise VideoError("video x.avi: decode failed: bad packet")

    it = prefetched(broken(), depth=1)
    assert [next(it), next(it)] == [1, 2]
    with pytest.raises(VideoError, match="x.avi: decode failed"):
        next(it)

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = prefetched(endless(), depth=3)
    assert next(it) == 0
    it.close()  # the consumer stops early (an error of the extraction, a break)
    # close() returns once the reader thread has ended: none is left, and nothing is produced after it
    assert not [t for t in threading.enumerate() if t.name == "frame-prefetch"]
    n = len(produced)
    assert n <= 6  # the reader stopped within a few items of the consumer
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        next(prefetched([], depth=0))
