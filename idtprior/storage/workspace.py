"""The workspace: a root folder (local path or fsspec URL) holding the manifest, one Zarr store per stage and the
per-chunk commit records that make every stage cached, resumable and atomic.

Layout::

    ROOT/
      manifest.csv                    one row per video (see ``manifest.py``)
      <stage>.zarr/                   the stage's arrays: <chunk>/<version>/<video_id>
      records/<stage>/<chunk>.json    commit record of a finished chunk (the commit point)
      results/                        Prefect task results
      artifacts/                      files a user inspects (plots, tables)

A chunk is written into a fresh ``<chunk>/<version>`` group, and only then is its record written, atomically (temp file
and rename on a local disk, a single object write on an object store). A crash before the record leaves an orphan
version that nobody reads and the next commit removes; a crash after it leaves the whole chunk. Readers go through the
record, never through directory listings.
"""

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import fsspec
import zarr
import zarr.errors

RECORD_FORMAT = 1


@dataclass
class ChunkRecord:
    """What a stage wrote for one chunk, and what it was computed from."""

    stage: str
    chunk: str
    fingerprint: str  # hash of the inputs' fingerprints + stage config + code version
    version: str  # the group under <stage>.zarr/<chunk>/ holding this chunk's arrays ("" when none)
    videos: dict[str, dict] = field(default_factory=dict)  # video_id -> {"status": "ok"|"failed", "error": ..., ...}
    created: float = 0.0
    seconds: float = 0.0
    format: int = RECORD_FORMAT

    @property
    def n_ok(self) -> int:
        return sum(1 for v in self.videos.values() if v.get("status") == "ok")

    @property
    def n_failed(self) -> int:
        return sum(1 for v in self.videos.values() if v.get("status") == "failed")


class Workspace:
    """Handle on a workspace root. Cheap to create; safe to pickle to Dask workers (it holds only the URL)."""

    def __init__(self, root: str | os.PathLike):
        root = os.fspath(root)
        self.fs, path = fsspec.core.url_to_fs(root)
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.root = str(Path(path).resolve()) if self.is_local else path.rstrip("/")
        self.url = self.root if self.is_local else f"{_protocol(self.fs)}://{self.root}"
        self.fs.makedirs(self.root, exist_ok=True)

    def __reduce__(self):
        return (Workspace, (self.url,))

    def __repr__(self) -> str:
        return f"Workspace({self.url!r})"

    # paths -------------------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def manifest_path(self) -> str:
        return self.path("manifest.csv")

    @property
    def results_dir(self) -> Path | None:
        """Where Prefect persists task results (local workspaces only)."""
        return Path(self.path("results")) if self.is_local else None

    @property
    def artifacts_dir(self) -> str:
        return self.path("artifacts")

    def store_url(self, stage: str) -> str:
        return f"{self.url}/{stage}.zarr"

    # files -------------------------------------------------------------------------------------------------------
    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write ``data`` so that a reader sees the old content or the new, never a part."""
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.is_local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:  # a single object write is atomic on object stores
            self.fs.pipe_file(path, data)

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None

    # zarr --------------------------------------------------------------------------------------------------------
    def open_store(self, stage: str, mode: str = "a") -> zarr.Group:
        try:
            return zarr.open_group(self.store_url(stage), mode=mode)
        except zarr.errors.ContainsGroupError:  # another chunk task created the root group in between: open it
            return zarr.open_group(self.store_url(stage), mode="r+")

    def new_version(self, stage: str, chunk: str) -> tuple[str, zarr.Group]:
        """A fresh, empty group ``<chunk>/<version>`` to write one attempt of a chunk into."""
        version = f"v{int(time.time())}-{uuid.uuid4().hex[:8]}"
        group = self.open_store(stage).require_group(f"{chunk}/{version}")
        return version, group

    def chunk_group(self, stage: str, chunk: str, version: str, mode: str = "r") -> zarr.Group:
        return zarr.open_group(self.store_url(stage), mode=mode, path=f"{chunk}/{version}")

    # records -----------------------------------------------------------------------------------------------------
    def record_path(self, stage: str, chunk: str) -> str:
        return self.path("records", stage, f"{chunk}.json")

    def read_record(self, stage: str, chunk: str) -> ChunkRecord | None:
        data = self.read_bytes(self.record_path(stage, chunk))
        if data is None:
            return None
        try:
            raw = json.loads(data)
            return ChunkRecord(**raw)
        except (ValueError, TypeError):
            return None  # unreadable record: treat the chunk as not done

    def records(self, stage: str) -> dict[str, ChunkRecord]:
        """All committed records of a stage, by chunk."""
        folder = self.path("records", stage)
        if not self.fs.exists(folder):
            return {}
        out = {}
        for p in sorted(self.fs.ls(folder, detail=False)):
            name = p.rsplit("/", 1)[-1]
            if name.endswith(".json"):
                rec = self.read_record(stage, name[: -len(".json")])
                if rec is not None:
                    out[rec.chunk] = rec
        return out

    def commit(self, record: ChunkRecord) -> None:
        """Make ``record`` (and the version group it names) the chunk's output, then drop older versions."""
        record.created = time.time()
        self.write_bytes_atomic(self.record_path(record.stage, record.chunk),
                                json.dumps(asdict(record), sort_keys=True).encode())
        self.remove_stale_versions(record.stage, record.chunk, keep=record.version)

    def remove_stale_versions(self, stage: str, chunk: str, keep: str | None) -> None:
        folder = f"{self.root}/{stage}.zarr/{chunk}"
        if not self.fs.exists(folder):
            return
        for p in self.fs.ls(folder, detail=False):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("v") and name != keep:
                self.fs.rm(p, recursive=True)


def _protocol(fs) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, tuple) else proto
