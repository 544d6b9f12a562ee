"""Phone footage and odd files: frames stored sideways with a display matrix come out upright, non-square pixels come
out at the display aspect, and files that are not readable videos fail with a reason (never a hang, never a retry).

The videos are written with PyAV the way a phone (or an anamorphic camera) stores them: the upright picture ``U``
turned by the inverse of the display rotation, with the display matrix (``set_display_rotation``, counter-clockwise
degrees) or the sample aspect ratio set on the stream. Lossless RGB H.264, so frames compare exactly."""

import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from idtprior.stages.ingest import probe_one
from idtprior.video.io import VideoError, iter_frames, probe_video


def upright_picture(h: int = 64, w: int = 48) -> np.ndarray:
    """A portrait picture with a red block in its top-left corner and a blue one in its bottom-right corner."""
    img = np.full((h, w, 3), 40, np.uint8)
    img[:16, :8] = (255, 0, 0)
    img[-8:, -12:] = (0, 0, 255)
    return img


def write_stored(path: Path, stored: np.ndarray, rotation: int | None = None, hflip: bool = False,
                 sar: Fraction | None = None, frames: int = 3) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264rgb", rate=25)
        s.height, s.width = stored.shape[:2]
        s.pix_fmt, s.options = "rgb24", {"crf": "0"}
        if rotation is not None:
            s.set_display_rotation(rotation, hflip=hflip)
        if sar is not None:
            s.codec_context.sample_aspect_ratio = sar
        for _ in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_phone_video_decodes_upright(tmp_path, rotation):
    up = upright_picture()
    stored = np.rot90(up, k=-rotation // 90)  # what the phone stored; shown turned by `rotation` counter-clockwise
    assert stored.shape[:2] != up.shape[:2] or rotation == 180
    path = write_stored(tmp_path / f"phone{rotation}.mp4", stored, rotation=rotation)
    info = probe_video(path)
    assert (info.height, info.width, info.rotation) == (64, 48, rotation % 360)
    frames = list(iter_frames(path))
    assert len(frames) == 3
    for f in frames:
        np.testing.assert_array_equal(f, up)  # the red marker is top-left again, exactly
    small = next(iter_frames(path, short_side=24))  # resizing happens after turning: the short side is the width
    assert small.shape == (32, 24, 3) and tuple(small[2, 2]) == (255, 0, 0)


def test_mirrored_display_matrix_is_undone(tmp_path):
    up = upright_picture()
    path = write_stored(tmp_path / "selfie.mp4", up[:, ::-1], rotation=0, hflip=True)
    np.testing.assert_array_equal(next(iter_frames(path)), up)


def test_non_square_pixels_decode_at_the_display_aspect(tmp_path):
    up = upright_picture()
    path = write_stored(tmp_path / "anamorphic.mp4", up[:, ::2], sar=Fraction(2, 1))  # pixels twice as wide as high
    info = probe_video(path)
    assert (info.height, info.width, info.sample_aspect) == (64, 48, 2.0)
    frame = next(iter_frames(path))
    assert frame.shape == (64, 48, 3)
    assert tuple(frame[4, 2]) == (255, 0, 0) and tuple(frame[-3, -4]) == (0, 0, 255)
    # both at once: every other row kept, stored sideways: the stored pixels are twice as wide as high (the stretch
    # applies to the stored grid, before the turn)
    path = write_stored(tmp_path / "both.mp4", np.rot90(up[::2], k=-1), rotation=90, sar=Fraction(2, 1))
    info = probe_video(path)
    assert (info.height, info.width, info.rotation) == (64, 48, 90)
    frame = next(iter_frames(path))
    assert frame.shape == (64, 48, 3) and tuple(frame[4, 2]) == (255, 0, 0) and tuple(frame[-3, -4]) == (0, 0, 255)


def test_a_rotation_off_the_right_angles_is_refused_with_its_angle(tmp_path):
    path = write_stored(tmp_path / "tilted.mp4", upright_picture(), rotation=45)
    with pytest.raises(VideoError, match=r"tilted.mp4: its display matrix turns frames by 45.0 degrees"):
        probe_video(path)
    with pytest.raises(VideoError, match="45.0 degrees"):
        next(iter_frames(path))


def test_files_that_are_no_readable_video_fail_with_the_reason(tmp_path):
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    with pytest.raises(VideoError, match="fifo.mp4: a FIFO, not a regular file"):
        probe_video(fifo)
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    with pytest.raises(VideoError, match=r"dangling.mp4: cannot stat: No such file or directory \(a symlink to "):
        probe_video(tmp_path / "dangling.mp4")
    long = tmp_path / ("x" * 5000 + ".mp4")
    with pytest.raises(VideoError, match="File name too long") as e:
        probe_video(long)
    assert len(str(e.value)) < 400
    with pytest.raises(VideoError, match="refused.mp4: its name as listed holds a NUL byte"):
        probe_one("v", "ws", "ingest", "c", "", "refused.mp4", "refused", "its name as listed holds a NUL byte")


def test_an_unreadable_file_fails_with_permission_denied(tmp_path, write_video):
    """A file mode 000 is a VideoError naming the reason, not an OSError (which the chunk runner would take for a
    transient fault and retry). Root reads everything: as root, the probe runs without the capabilities that let it
    (``setpriv``), still as the file's owner."""
    locked = write_video("locked.mp4", [upright_picture()] * 3)
    locked.chmod(0)
    code = ("import sys\nfrom idtprior.video.io import VideoError, probe_video\ntry:\n    probe_video(sys.argv[1])\n"
            "except VideoError as e:\n    print(e)\n")
    command = [sys.executable, "-c", code, str(locked)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no way to be refused a read")
        drop = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"video {locked}: cannot read: permission denied (Permission denied)"
