"""The manifest: one row per video, the table every stage starts from.

It is rebuilt by each stage's flow from the commit records (ingest's probe facts, then the failures of later stages),
and written atomically as CSV, so it is never the only copy of anything.

``status`` is ingest's verdict (ok, failed, duplicate) and the only thing the stages plan from: a failure in a later
stage is listed in ``failed_in`` (and its message in ``error``) but never takes a video out of any stage's plan. A
video that fails in encode stays in encode's plan and fails there again, deterministically, so the chunk's fingerprint
is stable and a rerun recomputes nothing; dropping it instead would flip the fingerprint on every run.
"""

import csv
import io
from dataclasses import dataclass, fields
from operator import attrgetter

from idtprior.storage.workspace import Workspace, gc_paused

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_DUPLICATE = "duplicate"
STATUS_RETRYABLE = "retryable"
"""A video's outcome in a later stage's record when it failed alone with a fault of the environment after the chunk's
retries: not its own fault, so ``idtprior run --retry-failed`` tries it again (``runtime.worker``)."""


@dataclass
class ManifestRow:
    video_id: str
    path: str
    fingerprint: str = ""
    duration: float = 0.0
    fps: float = 0.0
    frame_count: int = 0
    width: int = 0
    height: int = 0
    codec: str = ""
    label: str = ""
    split: str = ""
    status: str = STATUS_OK
    error: str = ""
    chunk: str = ""
    duplicate_of: str = ""
    failed_in: str = ""  # later stages where this video failed, comma-separated ("encode" or "decode,idt")

    @property
    def ok(self) -> bool:
        """Ingest accepted the video (usable and not a duplicate): every stage plans from these rows."""
        return self.status == STATUS_OK


_FIELDS = [f.name for f in fields(ManifestRow)]
_TYPES = {f.name: f.type for f in fields(ManifestRow)}
_ROW_VALUES = attrgetter(*_FIELDS)
_ROW_ID = attrgetter("video_id")


def write_manifest(ws: Workspace, rows: list[ManifestRow]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")  # csv.DictWriter's dialect: the same bytes as before
    writer.writerow(_FIELDS)
    writer.writerows(map(_ROW_VALUES, sorted(rows, key=_ROW_ID)))
    ws.write_bytes_atomic(ws.manifest_path, buf.getvalue().encode())


def _column(kind: type, texts) -> list:
    if kind is str:
        return list(texts)
    if kind is float:
        return [float(t) if t != "" else 0 for t in texts]
    return [kind(float(t)) if t != "" else 0 for t in texts]


def read_manifest(ws: Workspace) -> list[ManifestRow]:
    """The manifest's rows, sorted by id; an empty list when no ingest has run. A column the file lacks (a manifest
    from before it existed) reads as "" or 0."""
    data = ws.read_bytes(ws.manifest_path)
    if data is None:
        return []
    with gc_paused():
        return _parse_manifest(data)


def _parse_manifest(data: bytes) -> list[ManifestRow]:
    reader = csv.reader(io.StringIO(data.decode()))
    header = next(reader, None)
    if header is None:
        return []
    width = len(header)
    table = [raw if len(raw) >= width else raw + [""] * (width - len(raw)) for raw in reader if raw]  # blank: skip
    if not table:
        return []
    where = {name: i for i, name in enumerate(header)}
    by_index = list(zip(*table))  # the file's columns
    columns = [_column(_TYPES[name], by_index[where[name]] if name in where else [""] * len(table))
               for name in _FIELDS]
    return list(map(ManifestRow, *columns))
