"""The cluster montage as a person sees it: a tiny pipeline (ingest .. cluster) against a REAL `prefect server start`,
then the cluster summary artifact's page of the server's UI opened in headless Chromium (scripts/ui_screenshot.sh).
The page's DOM must hold an <img> whose src is the data URI the artifact holds, and the screenshot must show the
montage's pixels: the videos' red square (a solid block of that colour, which nothing else on the page draws).
Written to docs/ui-cluster-artifact.png with IDTPRIOR_WRITE_DOCS=1 (the README's picture)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from server_process import REPO

from idtprior.evaluation.figures import data_uri_bytes, decode_png
from idtprior_testutils import write_moving_square_videos

SCREENSHOT = REPO / "scripts" / "ui_screenshot.sh"
SQUARE = np.array([250, 30, 30])  # moving_square_frames' square (RGB), H.264 moves it a little: a tolerance


def solid_blocks(image: np.ndarray, colour: np.ndarray, side: int = 6, tol: int = 45) -> int:
    """Pixels at which a ``side x side`` block of ``image`` lies entirely within ``tol`` of ``colour``."""
    near = (np.abs(image[..., :3].astype(int) - colour).max(-1) <= tol).astype(np.int32)
    s = np.pad(near.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    block = s[side:, side:] - s[:-side, side:] - s[side:, :-side] + s[:-side, :-side]
    return int((block == side * side).sum())


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="no Chromium (Debian: apt-get install -y chromium; "
                    "`make install` does it where it runs as root)")
def test_the_cluster_montage_renders_in_the_ui_of_a_real_server(server_env, tmp_path):
    from idtprior.config import PipelineConfig
    from idtprior.runtime.artifacts import artifact_key
    from idtprior.flows.pipeline import pretrain_pipeline

    server = server_env
    write_moving_square_videos(tmp_path / "videos", 4, frames=32)
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "ingest": {"source": str(tmp_path / "videos"), "num_chunks": 1},
        "dask": {"n_workers": 0}, "decode": {"short_side": 48}, "idt": {"sample_videos": 4, "sample_rows": 500},
        "codebook": {"gmm_components": 2, "sketch_dim": 16, "gmm_iters": 4}, "cluster": {"k": 2, "runs": 1}})
    pretrain_pipeline(cfg, stages=["ingest", "decode", "idt", "fit_codebook", "encode", "cluster"], progress=False)

    key = artifact_key(cfg.workspace, "cluster", "summary")
    (artifact,) = server.post("/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC",
                                                     "limit": 1})
    uris = dict(re.findall(r"!\[([^\]]*)\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", artifact["data"]))
    montage = decode_png(data_uri_bytes(uris["cluster montage"]))
    assert solid_blocks(montage, SQUARE) > 0  # the colour checked on the screen is in the montage

    out = REPO / "docs" if os.environ.get("IDTPRIOR_WRITE_DOCS") == "1" else tmp_path
    png, dom = out / "ui-cluster-artifact.png", tmp_path / "artifact.html"
    url = f"{server.url}/artifacts/artifact/{artifact['id']}"
    proc = subprocess.run(["bash", str(SCREENSHOT), url, str(png), "1200x900", "20000", str(dom)],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    html = dom.read_text()
    srcs = re.findall(r'<img[^>]*src="(data:image/png;base64,[^"]+)"', html)
    assert uris["cluster montage"] in srcs, f"no <img> of the montage; {len(srcs)} data-URI images in the page"
    shot = decode_png(Path(png).read_bytes())
    assert solid_blocks(shot, SQUARE) > 0, "the screenshot shows no pixel of the montage's red square"
