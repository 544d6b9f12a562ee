"""What a workspace holds, stage by stage: the numbers ``idtprior status`` prints."""

from dataclasses import dataclass, field

from idtprior.storage.manifest import read_manifest
from idtprior.storage.workspace import Workspace


@dataclass
class StageStatus:
    stage: str
    chunks_done: int = 0
    chunks_expected: int = 0
    videos_ok: int = 0
    videos_failed: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # video_id -> message


def workspace_status(ws: Workspace, stages: tuple[str, ...]) -> list[StageStatus]:
    """Per stage: committed chunks of the current chunking (from the manifest), ok/failed videos and their errors."""
    manifest = read_manifest(ws)
    current = {row.chunk for row in manifest}
    out = []
    for stage in stages:
        st = StageStatus(stage)
        records = {c: r for c, r in ws.records(stage).items() if not current or c in current}
        st.chunks_done = len(records)
        st.chunks_expected = len(current)
        for rec in records.values():
            for vid, info in rec.videos.items():
                if info.get("status") == "ok":
                    st.videos_ok += 1
                else:
                    st.videos_failed += 1
                    st.errors[vid] = info.get("error", "")
        out.append(st)
    return out
