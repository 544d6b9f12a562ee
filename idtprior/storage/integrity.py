"""Integrity of what the workspace stores: what a commit record holds to check its chunk's data, the checks readers
make before they trust a chunk, and ``idtprior verify``.

A record (``ChunkRecord.files``) lists every file of its version group, ``relpath -> [size, crc32c hex]``, computed
at commit from the bytes just written. Two checks use it:

- cheap (a listing: every listed file is there with its size): every reader that opens a chunk through its record
  makes it (``Workspace.open_verified``), so a deleted or truncated chunk file is an error naming the stage, chunk and
  video, never fill values;
- full (the checksum of every byte): ``idtprior verify`` by default, and readers when ``IDTPRIOR_VERIFY=full``.

Arrays are written with every chunk present (``write_empty_chunks``: a black 16-frame chunk has a file like any
other, so a missing file is always an error) and a crc32c codec after compression (a flipped byte raises when read,
whatever the check asked). Records from before this (no ``files``) still read; they are "not verifiable".

Orphans: a crash between a chunk's data and its record leaves a version group no record names; a crash between the
record and the removal of the older version leaves that version; a crash inside the record's write leaves a
``<chunk>.json.tmp-*`` file. None is ever read (readers go through records). A commit of the chunk removes them,
``Workspace.remove_orphans`` removes them for one chunk, ``idtprior verify --repair`` for the whole workspace.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import google_crc32c  # a dependency of zarr (its crc32c codec)
from zarr.codecs import Crc32cCodec, ZstdCodec

from idtprior.storage.lock import every_stage_lock

VERIFY_ENV = "IDTPRIOR_VERIFY"
"""``full``: readers check the checksum of every file of a chunk they open (one read of it more); ``quick`` (the
default): sizes only. ``idtprior verify`` checks checksums unless ``--quick``."""

_BLOCK = 4 << 20


class IntegrityError(OSError):
    """Stored data that does not match its commit record: a file missing, truncated, changed or unreadable."""


def array_options(serializer=None) -> dict:
    """Keyword arguments of ``create_array`` for every array a stage commits: all chunks written (a missing file is
    always an error, never an all-fill chunk), zstd as zarr's default, then a crc32c of each stored chunk. With a
    ``serializer`` (an array-to-bytes codec that compresses, such as the decoded frames' JPEG), it and the crc32c."""
    if serializer is not None:
        return {"serializer": serializer, "compressors": (Crc32cCodec(),), "config": {"write_empty_chunks": True}}
    return {"compressors": (ZstdCodec(level=0), Crc32cCodec()), "config": {"write_empty_chunks": True}}


def full_check_asked() -> bool:
    mode = os.environ.get(VERIFY_ENV, "").strip().lower()
    if mode not in ("", "quick", "full"):
        raise ValueError(f"{VERIFY_ENV}={mode!r}: expected 'quick' or 'full'")
    return mode == "full"


def file_checksum(fs, path: str) -> str:
    """crc32c of a file's bytes, 8 hex digits (read in blocks: memory stays small whatever the file)."""
    crc = 0
    with fs.open(path, "rb") as f:
        while block := f.read(_BLOCK):
            crc = google_crc32c.extend(crc, block)
    return f"{crc:08x}"


def list_files(fs, folder: str) -> dict[str, int]:
    """Every file under ``folder``: path relative to it -> size in bytes (one listing)."""
    folder = folder.rstrip("/")
    if not fs.exists(folder):
        return {}
    out = {}
    for path, info in fs.find(folder, detail=True).items():
        if info.get("type", "file") == "file":
            out[path[len(folder) + 1:]] = int(info["size"])
    return out


def describe_files(fs, folder: str) -> dict[str, list]:
    """What a record stores to check its version group later: relpath -> [size, crc32c]."""
    return {rel: [size, file_checksum(fs, f"{folder}/{rel}")] for rel, size in sorted(list_files(fs, folder).items())}


def check_files(fs, folder: str, files: dict[str, list], full: bool, prefix: str = "") -> list[str]:
    """The problems of ``folder`` against the record's ``files`` (only those under ``prefix`` when given): a listed
    file missing, of another size, or (``full``) of another checksum. Empty when all is well."""
    want = {rel: v for rel, v in files.items() if not prefix or rel.startswith(prefix)}
    have = list_files(fs, f"{folder}/{prefix.rstrip('/')}" if prefix else folder)
    if prefix:
        have = {f"{prefix}{rel}": size for rel, size in have.items()}
    problems = []
    for rel, (size, crc) in sorted(want.items()):
        if rel not in have:
            problems.append(f"{rel} missing")
        elif have[rel] != size:
            problems.append(f"{rel} has {have[rel]} bytes, committed {size}")
        elif full and file_checksum(fs, f"{folder}/{rel}") != crc:
            problems.append(f"{rel} changed (checksum differs)")
    return problems


def chunk_label(stage: str, chunk: str, video: str | None = None) -> str:
    return f"{stage} chunk {chunk}" + (f" video {video}" if video else "")


@contextmanager
def reading(stage: str, chunk: str, video: str | None = None) -> Iterator[None]:
    """Turn a failed read of committed data (a checksum mismatch, an undecodable chunk) into an ``IntegrityError``
    naming the stage, chunk and video."""
    try:
        yield
    except IntegrityError:
        raise
    except (KeyError, IndexError):  # the caller's lookups, not the data
        raise
    except Exception as e:  # noqa: BLE001 - any decoding failure of stored bytes is corruption
        raise IntegrityError(f"{chunk_label(stage, chunk, video)}: stored data unreadable ({type(e).__name__}: {e}); "
                             f"run `idtprior verify WORKSPACE --repair` and rerun the stage") from e


# --- idtprior verify ----------------------------------------------------------------------------------------------

@dataclass
class Finding:
    stage: str
    chunk: str
    kind: str  # "bad record" | "bad data" | "not verifiable" | "orphan" | "temp file"
    detail: str
    repaired: bool = False

    @property
    def is_problem(self) -> bool:
        return self.kind != "not verifiable"


@dataclass
class VerifyReport:
    workspace: str
    full: bool
    checked: int = 0  # records checked against their data
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.is_problem]

    @property
    def unrepaired(self) -> list[Finding]:
        return [f for f in self.problems if not f.repaired]


def verify_workspace(ws, stages: list[str] | None = None, full: bool = True, repair: bool = False,
                     lock_stages: tuple[str, ...] = ()) -> VerifyReport:
    """Check every record of ``stages`` (default: every stage the workspace holds) against its data; find orphans.

    ``repair``: drop the records of bad chunks (the next run recomputes exactly those: its keys do not depend on
    the data) and remove what no record names (orphan versions, temporary record files, a dropped record's data).
    A repair holds the lock of every stage (those of ``lock_stages``, the workspace's, any with a lock file) for its
    whole run: it refuses with ``StageBusy`` naming the holder while a run holds one (that run's uncommitted version
    would look like an orphan), and stages started meanwhile refuse naming it."""
    if repair:
        with every_stage_lock(ws, [*lock_stages, *(stages or ws.stages())], "idtprior verify --repair"):
            return _verify(ws, stages, full, repair)
    return _verify(ws, stages, full, repair)


def _verify(ws, stages: list[str] | None, full: bool, repair: bool) -> VerifyReport:
    report = VerifyReport(ws.url, full)
    for stage in stages or ws.stages():
        named: dict[str, str] = {}  # chunk -> the version its (readable, good) record names
        record_dir = ws.path("records", stage)
        names = sorted(p.rsplit("/", 1)[-1] for p in ws.fs.ls(record_dir, detail=False)) \
            if ws.fs.exists(record_dir) else []
        for name in names:
            path = f"{record_dir}/{name}"
            if ".json.tmp-" in name:
                report.findings.append(Finding(stage, name.split(".json.tmp-")[0], "temp file", name))
                if repair:
                    ws.fs.rm(path)
                    report.findings[-1].repaired = True
                continue
            if not name.endswith(".json"):
                continue
            chunk = name[:-len(".json")]
            report.checked += 1
            rec, why = ws.parse_record(ws.read_bytes(path))
            if rec is not None and rec.chunk != chunk:
                rec, why = None, f"names chunk {rec.chunk!r}"
            files = None
            if rec is not None:
                try:
                    files = rec.file_table()
                except ValueError as e:
                    rec, why = None, str(e)
            if rec is None:
                finding = Finding(stage, chunk, "bad record", f"{name}: unreadable ({why})")
            elif not rec.version:  # a record without data (ingest's): nothing to check
                named[chunk] = rec.version
                continue
            elif files is None:
                report.findings.append(Finding(stage, chunk, "not verifiable",
                                               "record written before records listed their files"))
                named[chunk] = rec.version
                continue
            else:
                problems = check_files(ws.fs, ws.version_path(stage, chunk, rec.version), files, full) if files else [
                    "the record lists no file (its data was removed before it was committed)"]
                if not problems:
                    named[chunk] = rec.version
                    continue
                more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
                finding = Finding(stage, chunk, "bad data", f"version {rec.version}: {'; '.join(problems[:3])}{more}")
                named[chunk] = rec.version  # reported here, not again as an orphan
            report.findings.append(finding)
            if repair:  # the record first: a crash in between leaves unreferenced data, never a record without it
                ws.fs.rm(path)
                if rec is not None and ws.fs.exists(ws.version_path(stage, chunk, rec.version)):
                    ws.fs.rm(ws.version_path(stage, chunk, rec.version), recursive=True)
                finding.repaired = True
        for chunk, versions in ws.version_groups(stage).items():
            for version in versions:
                if named.get(chunk) == version:
                    continue
                report.findings.append(Finding(stage, chunk, "orphan", f"version {version}: no record names it"))
                if repair:
                    ws.fs.rm(ws.version_path(stage, chunk, version), recursive=True)
                    report.findings[-1].repaired = True
    return report


def report_lines(report: VerifyReport) -> list[str]:
    """What ``idtprior verify`` prints: one line per finding, then a summary."""
    lines = [f"{f.stage} {f.chunk}: {f.kind}: {f.detail}" + (" -> removed" if f.repaired else "")
             for f in report.findings]
    unverifiable = sum(1 for f in report.findings if not f.is_problem)
    check = "checksums" if report.full else "sizes"
    lines.append(f"{report.workspace}: {report.checked} records checked ({check}), {len(report.problems)} problems"
                 + (f", {len(report.problems) - len(report.unrepaired)} repaired" if report.problems else "")
                 + (f", {unverifiable} not verifiable (older records)" if unverifiable else ""))
    if report.unrepaired:
        lines.append("run `idtprior verify WORKSPACE --repair`, then the stages again: they recompute exactly the "
                     "dropped chunks")
    elif any(f.repaired and f.kind in ("bad record", "bad data") for f in report.findings):
        lines.append("rerun the stages: they recompute exactly the dropped chunks")
    return lines
