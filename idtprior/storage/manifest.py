"""The manifest: one row per video, the table every stage starts from.

It is rebuilt by each stage's flow from the commit records (ingest's probe facts, then the first failure of any later
stage), and written atomically as CSV, so it is never the only copy of anything.
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

    @property
    def ok(self) -> bool:
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
