"""The manifest rebuild and ``idtprior status`` at Kinetics-400's size, on a workspace of synthetic records.

    python benchmarks/manifest_scale.py                       # 235,000 videos in 1,000 chunks (about 3 minutes)
    python benchmarks/manifest_scale.py --videos 20000 --chunks 85

``benchmarks/pipeline_overhead.py`` runs real videos through ingest and decode, which takes 20 minutes at 20,000
videos; its videos have 3 frames, so each decode record lists one frame file a video. Here the records are written
directly, in the format ``Workspace.commit`` writes, with what each stage's records hold for a 10-second video
(copied from a real demo workspace's records): ingest's probe facts, decode's frame arrays (``--frames`` / 16 time
chunks and the array's metadata, each file listed with its size and checksum), the IDT sample's arrays for
``--idt-sample`` of the videos, and encode's chunk arrays; ``--failed`` of the videos failed in decode. The video
files do not exist: nothing here reads them.

Timed in one run, best of ``--repeat``, on two such workspaces: one whose records store their file lists as records
of format 1 did (a JSON object of every file, as in a workspace written before format 2) and one as ``commit`` writes
them now (format 2: one packed string, decoded only by a reader that checks the files):
- ``rebuild_manifest`` in this process;
- ``idtprior status WORKSPACE`` as a user runs it (a new process: its start-up is in the figure, and printed alone as
  ``idtprior --help``);
- writing the manifest's CSV: ``write_manifest`` against the writer it replaced (``csv.DictWriter`` of
  ``dataclasses.asdict`` rows), on the same rows.
"""

import argparse
import csv
import io
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

IDTPRIOR = str(Path(sys.executable).with_name("idtprior"))


def write_workspace(root: Path, videos: int, chunks: int, frames: int, idt_sample: float, failed: float,
                    record_format: int) -> None:
    from idtprior.storage import ChunkRecord, Workspace
    from idtprior.storage.workspace import pack_files

    ws = Workspace(str(root))
    ws.write_bytes_atomic(ws.chunking_path, json.dumps({"num_chunks": chunks}).encode())
    time_chunks = -(-frames // 16)
    per_chunk = -(-videos // chunks)
    fail_every = round(1 / failed) if failed > 0 else 0
    sample_every = round(1 / idt_sample) if idt_sample > 0 else 0
    n = 0
    for c in range(chunks):
        name = f"{c:04d}-of-{chunks:04d}"
        ids = [f"v_{i:07d}" for i in range(c * per_chunk, min(videos, (c + 1) * per_chunk))]
        n += len(ids)
        ingest = {v: {"codec": "h264", "duration": frames / 25, "fingerprint": f"{1000000 + i}-{i:024x}",
                      "fps": 25.0, "frame_count": frames, "height": 256, "label": f"class_{i % 400:03d}",
                      "path": f"/data/kinetics400/train/class_{i % 400:03d}/{v}.mp4", "rotation": 0,
                      "sample_aspect": 1.0, "split": "train", "status": "ok", "width": 340}
                  for i, v in zip(range(c * per_chunk, c * per_chunk + len(ids)), ids)}
        decode, decode_files = {}, {}
        for i, v in zip(range(c * per_chunk, c * per_chunk + len(ids)), ids):
            if fail_every and i % fail_every == 0:
                decode[v] = {"error": f"DecodeError: {v}.mp4: invalid data found when processing input at frame 97",
                             "status": "failed"}
                continue
            decode[v] = {"frames": frames, "height": 128, "status": "ok", "width": 170}
            for t in range(time_chunks):
                decode_files[f"{v}/c/{t}/0/0/0"] = [60000 + (i * 7919 + t) % 90000, f"{(i * 31 + t) & 0xffffffff:08x}"]
            decode_files[f"{v}/zarr.json"] = [689, f"{i & 0xffffffff:08x}"]
        idt, idt_files = {}, {}
        for i, v in zip(range(c * per_chunk, c * per_chunk + len(ids)), ids):
            if sample_every and i % sample_every == 0 and decode[v]["status"] == "ok":
                idt[v] = {"kept": 500, "note": "", "status": "ok", "trajectories": 2000 + i % 5000}
                for part in ("c/0/0", "c/1/0", "zarr.json"):
                    idt_files[f"{v}/{part}"] = [30000 + i % 9000, f"{(i * 17) & 0xffffffff:08x}"]
        encode = {v: ({"status": "ok", "trajectories": 2000 + i % 5000, "valid": True} if d["status"] == "ok"
                      else {"error": d["error"], "status": "failed"})
                  for i, (v, d) in zip(range(c * per_chunk, c * per_chunk + len(ids)), decode.items())}
        encode_files = {"sketches/c/0/0": [len(ids) * 2000 * 4, "0a1b2c3d"], "sketches/zarr.json": [512, "1a2b3c4d"],
                        "valid/c/0": [len(ids), "2a3b4c5d"], "valid/zarr.json": [400, "3a4b5c6d"],
                        "zarr.json": [300, "4a5b6c7d"]}
        for stage, info, files in (("ingest", ingest, {}), ("decode", decode, decode_files),
                                   ("idt", idt, idt_files), ("encode", encode, encode_files)):
            rec = ChunkRecord(stage=stage, chunk=name, fingerprint=f"{stage}-{c:040x}"[:40],
                              version="v1" if files else "", videos=info, created=time.time(), seconds=60.0,
                              files=files, format=record_format)
            stored = asdict(rec)
            if record_format >= 2:
                stored["files"] = pack_files(files)
            ws.write_bytes_atomic(ws.record_path(stage, name), json.dumps(stored, sort_keys=True).encode())
    assert n == videos, (n, videos)


def best(f, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=235_000)
    ap.add_argument("--chunks", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=250, help="frames a video (Kinetics: 10 s at 25 fps)")
    ap.add_argument("--idt-sample", type=float, default=0.04, help="fraction of the videos in the IDT sample")
    ap.add_argument("--failed", type=float, default=0.01, help="fraction of the videos failed in decode")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="write the workspaces here and keep them (default: a temporary folder)")
    args = ap.parse_args()

    from idtprior.runtime.records import rebuild_manifest
    from idtprior.storage import Workspace
    from idtprior.storage.manifest import _FIELDS, write_manifest

    def dictwriter_csv(rows) -> bytes:  # the manifest writer before: csv.DictWriter of dataclasses.asdict rows
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=_FIELDS)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r.video_id):
            writer.writerow(asdict(row))
        return buf.getvalue().encode()

    start, _ = best(lambda: subprocess.run([IDTPRIOR, "--help"], capture_output=True, check=True), args.repeat)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="manifest-scale-") as tmp:
        for record_format in (1, 2):
            root = Path(args.keep or tmp) / f"ws-format{record_format}"
            t0 = time.perf_counter()
            write_workspace(root, args.videos, args.chunks, args.frames, args.idt_sample, args.failed, record_format)
            size = sum(p.stat().st_size for p in (root / "records").rglob("*.json"))
            print(f"records of format {record_format}: {args.videos:,} videos in {args.chunks:,} chunks, "
                  f"{args.frames} frames a video: {size / 2**20:.0f} MB (written in {time.perf_counter() - t0:.0f} s)")
            ws = Workspace(str(root))
            rebuild, rows = best(lambda ws=ws: rebuild_manifest(ws), args.repeat)
            status, proc = best(lambda root=root: subprocess.run([IDTPRIOR, "status", str(root)], capture_output=True,
                                                       text=True), args.repeat)
            if proc.returncode not in (0, 1):
                print(proc.stdout[-2000:], proc.stderr[-2000:])
                return 1
            failed = sum(1 for r in rows if r.failed_in)
            print(f"  manifest rebuild {rebuild:.2f} s ({len(rows):,} rows, {failed:,} failed in decode); "
                  f"idtprior status {status:.2f} s (rc {proc.returncode})")
            figures[record_format] = (rebuild, status)
        before, old_bytes = best(lambda: dictwriter_csv(rows), args.repeat)
        now, _ = best(lambda: write_manifest(ws, rows), args.repeat)
        same = old_bytes == ws.read_bytes(ws.manifest_path)
    print(f"idtprior start-up ({IDTPRIOR} --help): {start:.2f} s")
    print(f"manifest CSV: {before:.2f} s with csv.DictWriter of asdict rows, {now:.2f} s now ({before / now:.1f}x), "
          f"the same bytes: {same}")
    (r1, s1), (r2, s2) = figures[1], figures[2]
    print(f"format 2 against format 1: rebuild {r1 / r2:.1f}x faster, status {s1 / s2:.1f}x "
          f"({s1 - start:.2f} s -> {s2 - start:.2f} s after start-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
