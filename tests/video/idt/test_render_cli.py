import argparse
import gzip
import subprocess
import sys

import numpy as np

from idtprior.video.idt import IDTParams, extract_idt
from idtprior.video.idt.cli import add_idt_arguments, run_idt
from idtprior.video.idt.render import render_trajectories, save_animation, save_strip
from idtprior.video.idt.textformat import read_idt_text
from idtprior.video.io import write_video

from .test_extract import moving_square_video


def test_render_draws_on_the_moving_object(tmp_path):
    frames = list(moving_square_video(20, 2.0))
    rows, pts = extract_idt(frames, IDTParams(scale_num=1), return_points=True)
    images = list(render_trajectories(frames, rows, pts))
    assert len(images) == 20
    changed = np.abs(images[15].astype(int) - frames[15].astype(int)).sum(-1) > 0
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 50 and 20 <= np.median(ys) <= 76  # drawn where the square is
    assert save_strip(images, tmp_path / "s.png", every=5) == 4 and (tmp_path / "s.png").stat().st_size > 0
    assert save_animation(images, tmp_path / "a.gif") == 20


def test_cli_writes_release_format(tmp_path):
    video = tmp_path / "v.avi"
    write_video(video, moving_square_video(20, 2.0), codec="ffv1")
    out = tmp_path / "o.txt.gz"
    parser = add_idt_arguments(argparse.ArgumentParser())
    assert run_idt(parser.parse_args([str(video), "-A", "1", "-o", str(out)])) == 0
    rows = read_idt_text(out)
    assert rows.shape[1] == 436 and len(rows) > 0
    assert gzip.open(out, "rt").readline().endswith("\t\n")
    assert run_idt(parser.parse_args([str(tmp_path / "missing.avi")])) == 2


def test_idtprior_idt_skips_the_pipeline_imports(tmp_path):
    """``idtprior idt`` writes what ``run_idt`` writes, without importing the pipeline's config (pydantic) or storage
    (zarr), and a bad video is still one line and status 2."""
    video = tmp_path / "v.avi"
    write_video(video, moving_square_video(20, 2.0), codec="ffv1")
    reference = tmp_path / "r.txt"
    assert run_idt(add_idt_arguments(argparse.ArgumentParser()).parse_args([str(video), "-A", "1", "-o",
                                                                             str(reference)])) == 0
    code = ("import sys; from idtprior.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, sorted(m for m in ('pydantic', 'zarr', 'prefect', 'torch', 'idtprior.config') if m in sys.modules))")
    out = tmp_path / "o.txt"
    done = subprocess.run([sys.executable, "-c", code, "idt", str(video), "-A", "1", "-o", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.split("\n")[0] == "0 []", done.stdout + done.stderr
    assert out.read_bytes() == reference.read_bytes() and len(reference.read_bytes()) > 0
    bad = subprocess.run([sys.executable, "-c", code, "idt", str(tmp_path / "missing.avi")], capture_output=True,
                         text=True, timeout=120, check=False)
    assert bad.stdout.startswith("2 ") and "missing.avi" in bad.stderr and len(bad.stderr.splitlines()) == 1, bad
