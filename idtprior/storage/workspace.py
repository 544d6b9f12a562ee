"""The workspace: a root folder (local path or fsspec URL) holding the manifest, one Zarr store per stage and the
per-chunk commit records that make every stage cached, resumable and atomic.

Layout::

    ROOT/
      manifest.csv                    one row per video (see ``manifest.py``)
      chunking.json                   the current chunking: {"num_chunks": N}, written by ingest
      <stage>.zarr/                   the stage's arrays: <chunk>/<version>/<video_id>
      records/<stage>/<chunk>.json    commit record of a finished chunk (the commit point)
      results/                        Prefect task results
      artifacts/                      files a user inspects (plots, tables)
      cache/<name>-stats/<chunk>.json what ingest (and imports) read: path -> (stat, content fingerprint); deletable

A chunk is written into a fresh ``<chunk>/<version>`` group, and only then is its record written, atomically (temp file
and rename on a local disk, a single object write on an object store). A crash before the record leaves an orphan
version that nobody reads and the next commit removes; a crash after it leaves the whole chunk. Readers go through the
record, never through directory listings, and check the chunk's files against it (``open_verified``; see
``integrity.py``: the record lists every file of its version with a size and a checksum).

Chunks are named ``<i>-of-<N>`` after ``ingest.num_chunks``; whole-dataset stages use the chunk ``all``. Only one
chunking is current (``chunking.json``): ``records`` lists only its chunks (and ``all``), and ingest removes every
other chunking's records and data when it commits a new one, so no reader ever sees a video twice.
"""

import contextlib
import csv
import gc
import io
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import fsspec
import zarr
import zarr.errors

from idtprior.storage.fingerprint import hash_json
from idtprior.storage.integrity import IntegrityError, check_files, chunk_label, describe_files, full_check_asked
from idtprior.storage.lock import check_holder

RECORD_FORMAT = 2
"""2: the record's ``files`` are stored as one JSON string (:func:`pack_files`), which a reader decodes only when it
checks them: at Kinetics-400's size, decoding every listed frame file made reading a stage's records take seconds.
1: a JSON object. Both read."""
_CHUNK_NAME = re.compile(r"^\d+-of-(\d+)$")


def chunk_count(chunk: str) -> int | None:
    """The ``num_chunks`` a chunk name belongs to (``"0003-of-0004"`` -> 4); None for other names (``"all"``)."""
    m = _CHUNK_NAME.match(chunk)
    return int(m.group(1)) if m else None


@dataclass
class ChunkRecord:
    """What a stage wrote for one chunk, and what it was computed from."""

    stage: str
    chunk: str
    fingerprint: str  # hash of the inputs' fingerprints + stage config + code version
    version: str  # the group under <stage>.zarr/<chunk>/ holding this chunk's arrays ("" when none)
    # video_id -> {"status": "ok"|"failed"|"retryable", "error": ..., ...}
    videos: dict[str, dict] = field(default_factory=dict)
    created: float = 0.0
    seconds: float = 0.0
    format: int = RECORD_FORMAT
    # every file of the version group: relpath -> [size, crc32c hex], set at commit; None: a record from before files
    # were listed (it reads, but cannot be verified). Read from a record of format 2 it is the packed string until
    # ``file_table`` decodes it: read it through ``file_table``
    files: dict[str, list] | str | None = None
    # How it was computed, out of its key: the key's behaviour version ("decode@jpeg/v1"), the normalised code
    # fingerprint of the process that computed it (``runtime.codeprint``), the versions of the packages that shape results
    # (``tasks.environment``); "" and {} in records made before behaviour versions
    behaviour: str = ""
    code: str = ""
    env: dict[str, str] = field(default_factory=dict)
    rekeyed_from: str = ""  # the legacy key of a record re-keyed in place at the upgrade (``idtprior.runtime.keys``)
    invalidated: str = ""  # why the record matches no plan any more (``idtprior recompute``): the next run redoes it
    # what retries of its failed videos changed (``idtprior run --retry-failed``): a hash over every outcome a retry
    # changed, "" when none did. The record keeps its plan's key (a run without the flag finds it up to date), and
    # downstream keys hold ``content_key``, so what read its old outcomes is recomputed
    retried: str = ""

    @property
    def content_key(self) -> str:
        """What a downstream key holds of this record: its key, and what retries of its videos changed."""
        return self.fingerprint if not self.retried else hash_json([self.fingerprint, "retried", self.retried])

    def file_table(self) -> dict[str, list] | None:
        """``files`` as ``relpath -> [size, crc32c hex]`` (None: not listed), decoded on first use. Raises
        ``ValueError`` naming the stage and chunk when a stored list does not decode."""
        if isinstance(self.files, str):
            try:
                self.files = unpack_files(self.files)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{self.stage} chunk {self.chunk}: the record's file list does not decode "
                                 f"({type(e).__name__}: {e})"[:300]) from e
        return self.files

    @property
    def n_ok(self) -> int:
        return sum(1 for v in self.videos.values() if v.get("status") == "ok")

    @property
    def n_failed(self) -> int:
        return sum(1 for v in self.videos.values() if v.get("status") == "failed")

    @property
    def n_retryable(self) -> int:
        """Videos that failed for a fault of the environment (``storage.STATUS_RETRYABLE``)."""
        return sum(1 for v in self.videos.values() if v.get("status") == "retryable")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a bulk of acyclic objects is built (parsed records, manifest
    rows): with a large heap alive, every full collection that the allocations trigger walks all of it (at 235,000
    videos, building the manifest's rows took 0.85 s with it running, 0.12 s without). Nested or in several threads
    it ends enabled if it was enabled before any of them."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def pack_files(files: dict[str, list]) -> str:
    """A record's file list as stored (format 2): one compact JSON string of ``[relpath, size, crc]`` rows, sorted."""
    return json.dumps([[rel, size, crc] for rel, (size, crc) in sorted(files.items())], separators=(",", ":"))


def unpack_files(text: str) -> dict[str, list]:
    """The inverse of :func:`pack_files`."""
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError(f"a list of files was expected, not {type(rows).__name__}")
    out = {}
    for rel, size, crc in rows:
        if not isinstance(rel, str) or not isinstance(size, int) or not isinstance(crc, str):
            raise ValueError(f"file row {[rel, size, crc]!r} is not [path, size, checksum]")
        out[rel] = [size, crc]
    return out


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
    def chunking_path(self) -> str:
        return self.path("chunking.json")

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

    def version_path(self, stage: str, chunk: str, version: str) -> str:
        return self.path(f"{stage}.zarr", chunk, version)

    def open_verified(self, stage: str, record: ChunkRecord, video: str | None = None,
                      full: bool | None = None) -> zarr.Group:
        """The chunk's version group, read-only, after checking its files against ``record`` (only ``video``'s when
        given): each listed file present with its size, and with its checksum when ``full`` (default: asked by
        ``IDTPRIOR_VERIFY=full``). Raises ``IntegrityError`` naming the stage, chunk and video. A record from before
        records listed their files is opened unchecked."""
        try:
            files = record.file_table()
        except ValueError as e:
            raise IntegrityError(f"{chunk_label(stage, record.chunk, video)}: {e}; run `idtprior verify {self.url} "
                                 f"--repair` and rerun the {stage} stage") from e
        if files is not None:
            full = full_check_asked() if full is None else full
            folder = self.version_path(stage, record.chunk, record.version)
            prefix = f"{video}/" if video else ""
            problems = check_files(self.fs, folder, files, full, prefix)
            if not problems and video and not any(rel.startswith(prefix) for rel in files):
                problems = [f"the record lists no file of {video}"]
            if problems:
                more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
                raise IntegrityError(
                    f"{chunk_label(stage, record.chunk, video)}: stored data does not match its record (version "
                    f"{record.version}): {'; '.join(problems[:3])}{more}; run `idtprior verify {self.url} --repair` "
                    f"and rerun the {stage} stage")
        try:
            return self.chunk_group(stage, record.chunk, record.version)
        except FileNotFoundError as e:
            raise IntegrityError(f"{chunk_label(stage, record.chunk, video)}: version {record.version} of the record "
                                 f"is not in {self.store_url(stage)}") from e

    def stages(self) -> list[str]:
        """Every stage the workspace holds records or data of."""
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in self._subfolders(self.path("records"))}
        names |= {p.rsplit("/", 1)[-1][:-len(".zarr")] for p in self._subfolders(self.root) if p.endswith(".zarr")}
        return sorted(names)

    def version_groups(self, stage: str) -> dict[str, list[str]]:
        """chunk -> the version groups ``<stage>.zarr/<chunk>/v*`` on storage, named by a record or not."""
        out = {}
        for chunk_dir in self._subfolders(self.path(f"{stage}.zarr")):
            versions = [p.rsplit("/", 1)[-1] for p in self._subfolders(chunk_dir)]
            out[chunk_dir.rsplit("/", 1)[-1]] = sorted(v for v in versions if v.startswith("v"))
        return out

    # records -----------------------------------------------------------------------------------------------------
    def record_path(self, stage: str, chunk: str) -> str:
        return self.path("records", stage, f"{chunk}.json")

    def read_record(self, stage: str, chunk: str) -> ChunkRecord | None:
        data = self.read_bytes(self.record_path(stage, chunk))
        return None if data is None else self.parse_record(data)[0]  # unreadable: the chunk is not done

    @staticmethod
    def parse_record(data: bytes | None) -> tuple[ChunkRecord | None, str]:
        """A record from its stored bytes, or None and why not."""
        if data is None:
            return None, "no file"
        try:
            return ChunkRecord(**json.loads(data)), ""
        except (ValueError, TypeError) as e:
            return None, f"{type(e).__name__}: {e}"[:200]

    def records(self, stage: str) -> dict[str, ChunkRecord]:
        """The committed records of a stage, by chunk: those of the current chunking (``num_chunks``) and whole-dataset
        ones (``all``). Records of another chunking are never listed (a video would be read twice, or from stale
        data); ``read_record`` still reads any chunk by name, which is how a re-chunking ingest resumes."""
        folder = self.path("records", stage)
        if not self.fs.exists(folder):
            return {}
        current = self.num_chunks()
        out = {}
        with gc_paused():
            for p in sorted(self.fs.ls(folder, detail=False)):
                name = p.rsplit("/", 1)[-1]
                if not name.endswith(".json"):
                    continue
                chunk = name[: -len(".json")]
                if current is not None and chunk_count(chunk) not in (None, current):
                    continue
                rec = self.read_record(stage, chunk)
                if rec is not None:
                    out[rec.chunk] = rec
        return out

    # chunking ----------------------------------------------------------------------------------------------------
    def num_chunks(self) -> int | None:
        """The current chunking: ``num_chunks`` of the last ingest that committed all its chunks (``chunking.json``).
        A workspace from before that file: the one chunking of the manifest's chunk names. None when neither tells
        (no ingest yet): then every record is current."""
        data = self.read_bytes(self.chunking_path)
        if data is None:
            return self._manifest_chunking()
        try:
            n = int(json.loads(data)["num_chunks"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"workspace {self.url}: unreadable {self.chunking_path}: {data[:200]!r}") from e
        return n

    def _manifest_chunking(self) -> int | None:
        data = self.read_bytes(self.manifest_path)
        if data is None:
            return None
        counts = {chunk_count(row.get("chunk") or "") for row in csv.DictReader(io.StringIO(data.decode()))}
        counts.discard(None)
        return counts.pop() if len(counts) == 1 else None

    def set_chunking(self, num_chunks: int) -> list[str]:
        """Make ``num_chunks`` the current chunking, then remove every other chunking's records and data (all
        stages); returns what was removed, as ``<stage>/<chunk>`` and ``<stage>.zarr/<chunk>``.

        Ingest calls this after all chunks of its chunking are committed, so a run that fails part-way leaves the
        previous chunking current and whole. Records go before data: a crash in between leaves unreferenced data,
        never a record pointing at nothing; the next call finishes the removal."""
        if num_chunks < 1:
            raise ValueError(f"num_chunks must be at least 1, got {num_chunks}")
        if self.read_bytes(self.chunking_path) is None or self.num_chunks() != num_chunks:
            self.write_bytes_atomic(self.chunking_path, json.dumps({"num_chunks": num_chunks}).encode())
        removed = []
        for folder, suffix in [(p, ".json") for p in self._subfolders(self.path("records"))] + [
                (p, "") for p in self._subfolders(self.root) if p.endswith(".zarr")] + [
                (p, ".json") for p in self._subfolders(self.path("cache")) if p.endswith("-stats")]:
            if not self.fs.exists(folder):
                continue
            for p in self.fs.ls(folder, detail=False):
                name = p.rstrip("/").rsplit("/", 1)[-1]
                if not name.endswith(suffix):
                    continue
                chunk = name[: len(name) - len(suffix)]
                if chunk_count(chunk) not in (None, num_chunks):
                    self.fs.rm(p, recursive=not suffix)
                    removed.append(f"{folder.rsplit('/', 1)[-1]}/{chunk}")
        return removed

    def _subfolders(self, folder: str) -> list[str]:
        if not self.fs.exists(folder):
            return []
        return sorted(p.rstrip("/") for p in self.fs.ls(folder, detail=False) if self.fs.isdir(p))

    def _rewrite_record(self, stage: str, chunk: str, keyed: str, change) -> bool:
        """Apply ``change(stored dict)`` to the record of ``stage``/``chunk`` in place (its data untouched), only while
        it is keyed ``keyed``; False (nothing written) when it is gone or keyed otherwise by now."""
        path = self.record_path(stage, chunk)
        data = self.read_bytes(path)
        if data is None:
            return False
        stored = json.loads(data)
        if stored.get("fingerprint") != keyed:
            return False
        change(stored)
        self.write_bytes_atomic(path, json.dumps(stored, sort_keys=True).encode())
        return True

    def rekey(self, stage: str, chunk: str, old: str, new: str, stamp: dict,
              train: tuple[str, str] | None = None) -> bool:
        """Give the record of ``stage``/``chunk`` keyed ``old`` the key ``new`` in place, with ``rekeyed_from`` =
        ``old`` and the fields of ``stamp``; ``train``: (old, new) train fingerprint of a trained network's record
        (``videos["model"]``), the old one kept as ``legacy_train_fingerprint``. False when the record is gone or keyed
        otherwise by now."""
        def change(stored: dict) -> None:
            stored.update(stamp, fingerprint=new, rekeyed_from=old)
            model = stored.get("videos", {}).get("model")
            if train is not None and isinstance(model, dict) and model.get("train_fingerprint") == train[0]:
                model["legacy_train_fingerprint"], model["train_fingerprint"] = train

        return self._rewrite_record(stage, chunk, old, change)

    def invalidate(self, stage: str, chunk: str, fingerprint: str, why: str) -> bool:
        """Make the record of ``stage``/``chunk`` keyed ``fingerprint`` match no plan, so that the next run recomputes
        that chunk (its data stays readable until then); ``why`` is kept in the record. False when the record is gone
        or keyed otherwise by now."""
        return self._rewrite_record(stage, chunk, fingerprint, lambda stored: stored.update(
            fingerprint=f"invalidated-{fingerprint}", invalidated=why))

    def commit(self, record: ChunkRecord) -> None:
        """Make ``record`` (and the version group it names) the chunk's output, then drop older versions and any
        leftover of an earlier attempt. The record lists the version's files with their sizes and checksums (one
        read of the bytes just written) for readers and ``idtprior verify`` to check. Refused, nothing written, when
        the version holds no file (``IntegrityError``) or when this process took the stage's lock and no longer holds
        it (``storage.lock.LockLost``)."""
        record.created = time.time()
        record.format = RECORD_FORMAT
        record.files = describe_files(self.fs, self.version_path(record.stage, record.chunk, record.version)) \
            if record.version else {}
        if record.version and not record.files:
            raise IntegrityError(f"{chunk_label(record.stage, record.chunk)}: version {record.version} has no file on "
                                 f"storage (removed while it was written?): nothing committed; run the "
                                 f"{record.stage} stage again")
        check_holder(self, record.stage)
        stored = {f.name: getattr(record, f.name) for f in fields(record)}
        stored["files"] = pack_files(record.files)
        self.write_bytes_atomic(self.record_path(record.stage, record.chunk),
                                json.dumps(stored, sort_keys=True).encode())
        self.remove_orphans(record.stage, record.chunk, keep=record.version)

    def remove_orphans(self, stage: str, chunk: str, keep: str | None = None) -> None:
        """Remove what a crashed attempt of the chunk left behind: versions other than ``keep`` (default: the one its
        record names; all when it has none) and temporary record files. Only while no other attempt of the chunk
        is writing (one writer per chunk, as everywhere)."""
        if keep is None:
            rec = self.read_record(stage, chunk)
            keep = rec.version if rec is not None else ""
        self.remove_stale_versions(stage, chunk, keep=keep)
        if self.is_local:
            folder = self.path("records", stage)
            for name in os.listdir(folder) if os.path.isdir(folder) else ():
                if name.startswith(f"{chunk}.json.tmp-"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(f"{folder}/{name}")

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
