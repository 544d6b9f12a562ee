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
from dataclasses import asdict, dataclass, fields

from idtprior.storage.workspace import Workspace

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_DUPLICATE = "duplicate"


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


def write_manifest(ws: Workspace, rows: list[ManifestRow]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_FIELDS)
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r.video_id):
        writer.writerow(asdict(row))
    ws.write_bytes_atomic(ws.manifest_path, buf.getvalue().encode())


def read_manifest(ws: Workspace) -> list[ManifestRow]:
    """The manifest's rows, sorted by id; an empty list when no ingest has run."""
    data = ws.read_bytes(ws.manifest_path)
    if data is None:
        return []
    rows = []
    for raw in csv.DictReader(io.StringIO(data.decode())):
        values = {}
        for name in _FIELDS:
            text = raw.get(name, "")
            kind = _TYPES[name]
            values[name] = kind(float(text)) if kind in (int, float) and text != "" else (text if kind is str else 0)
        rows.append(ManifestRow(**values))
    return rows
