"""A list file full of bad lines, run as the user runs it (``idtprior run CONFIG --source LIST --workspace W``) on the
real Prefect engine: no traceback, exit status 0, every line a manifest row (ok, failed with its reason, duplicate) or a
skipped line counted on the end line and listed in the failures artifact; every id and path safe to store."""

import re

import pytest

from idtprior.cli import main
from idtprior.runtime.artifacts import artifact_key
from idtprior.storage import Workspace, read_manifest
from idtprior.storage.fingerprint import MAX_ID_LENGTH
from idtprior_testutils import write_moving_square_videos

pytestmark = pytest.mark.usefixtures("prefect_engine")


def _artifact_rows(key: str) -> list[dict]:
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (newest, *_) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                             sort=ArtifactSort.CREATED_DESC)
    return json.loads(newest.data) if isinstance(newest.data, str) else newest.data


def test_a_bad_list_ends_as_rows_and_skipped_lines(tmp_path, capsys):
    videos = tmp_path / "videos"
    write_moving_square_videos(videos, 3)  # clip000.mp4 .. clip002.mp4
    (videos / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    lst = tmp_path / "lists" / "bad.txt"
    lst.parent.mkdir()
    lst.write_bytes(b"# clips for the bad-input drill\n"
                    b"\n"
                    b"clip000.mp4\n"
                    b"clip000.mp4\n"  # the same file twice
                    + str(videos / "clip001.mp4").encode() + b"\n"  # absolute
                    b"../videos/sub/../clip002.mp4\n"  # `..` (inside the video root once resolved)
                    + b"v" * 5000 + b".mp4\n"
                    b"nul\x00byte.mp4\n"
                    b"caf\xe9.mp4\n"
                    b"dangling.mp4\n")
    config = tmp_path / "config.yaml"
    config.write_text("stages: [ingest]\ndask: {n_workers: 0}\ningest: {num_chunks: 2}\n")
    ws = tmp_path / "ws"
    code = main(["run", str(config), "--source", str(lst), "--video-root", str(videos), "--workspace", str(ws)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in out + err
    assert "ingest: 2 chunks, 4 videos ok, 4 failed, duplicates 1, lines_skipped 2" in out

    rows = {r.video_id: r for r in read_manifest(Workspace(str(ws)))}
    assert len(rows) == 8  # one row per line that names a file
    for vid, row in rows.items():
        assert re.fullmatch(r"[A-Za-z0-9._-]+", vid) and len(vid) <= MAX_ID_LENGTH
        assert "\x00" not in row.path and row.path.isprintable()
    assert {v: r.status for v, r in rows.items() if r.status != "failed"} == {
        "clip000": "ok", "clip000-1": "duplicate", rows_id(rows, "clip001"): "ok", rows_id(rows, "clip002"): "ok"}
    assert rows["clip000-1"].duplicate_of == "clip000"
    failed = {v: r.error for v, r in rows.items() if r.status == "failed"}
    assert len(failed) == 4
    errors = sorted(failed.values())
    assert any("File name too long" in e for e in errors)
    assert any(e.startswith("ingest: VideoError: video nul\\x00byte.mp4: its name as listed holds a NUL byte")
               for e in errors)
    assert any("caf\\xe9.mp4: its name or label holds bytes that are not UTF-8" in e for e in errors)
    assert f"ingest: VideoError: video {videos / 'dangling.mp4'}: dangling symlink to {tmp_path / 'gone.mp4'}, which " \
           f"does not exist" in errors

    table = _artifact_rows(artifact_key(Workspace(str(ws)), "ingest", "failures"))
    assert {"video_id": "(skipped)", "error": "1 blank and 1 comment lines of the source skipped"} in table
    assert {r["video_id"] for r in table} >= set(failed) | {"clip000-1"}


def rows_id(rows: dict, stem: str) -> str:
    (vid,) = [v for v in rows if v.endswith(stem)]
    return vid
