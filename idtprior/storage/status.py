"""What a workspace holds, stage by stage: the numbers ``idtprior status`` prints, and (given the fingerprints a
config would key each chunk on) which stages a run with that config would redo."""

from dataclasses import dataclass, field
from datetime import UTC, datetime

from idtprior.storage.manifest import STATUS_RETRYABLE, read_manifest
from idtprior.storage.workspace import Workspace, chunk_count

ALL = "all"
WHOLE_DATASET_STAGES = ("fit_codebook", "sketches", "cluster", "pretrain_ir", "pretrain_la", "tune_joint",
                        "pretrain_la_bank", "supervised")
"""Stages with one record for the whole dataset (chunk ``all``); ``sketches`` is encode's assembly of its chunks."""
NAMED_RECORD_STAGES = ("evaluate",)
"""Stages with one record per named piece of work (evaluate: ``<network>.<protocol>.<clip length>``); a record the
config no longer asks for is kept (another network's evaluation), not counted as stale."""
TRAINED = ("pretrain_ir", "pretrain_la", "tune_joint", "pretrain_la_bank", "supervised")

UPSTREAM = {"decode": ("ingest",), "detect": ("ingest",), "idt": ("ingest", "detect"), "fit_codebook": ("idt",),
            "encode": ("ingest", "detect", "fit_codebook"), "sketches": ("encode",), "cluster": ("encode",),
            "pretrain_ir": ("decode",), "pretrain_la": ("decode", "cluster", "pretrain_ir"),
            "tune_joint": ("decode", "encode", "pretrain_la"), "pretrain_la_bank": ("decode", "pretrain_ir"),
            "supervised": ("decode",), "evaluate": ("decode", *TRAINED)}
"""The stages whose records a stage's fingerprint is computed from: when one of them is out of date, so is the stage
after they rerun, whatever its own comparison says now (an over-approximation for the training stages, whose inputs
depend on their settings)."""


@dataclass
class StageStatus:
    stage: str
    chunks_done: int = 0
    chunks_expected: int = 0
    videos_ok: int = 0
    videos_failed: int = 0
    videos_retryable: int = 0  # of videos_failed: a fault of the environment (``idtprior run --retry-failed``)
    videos_without_boxes: int = 0  # ok, but ran without person boxes: their detection failed
    errors: dict[str, str] = field(default_factory=dict)  # video_id -> message
    whole: bool = False  # one record for the whole dataset (chunk "all")
    created: float = 0.0  # whole-dataset stages: when the record was committed (0: not run)
    fingerprint: str = ""
    seconds: float = 0.0
    check: str = ""  # against a config: "up to date", "out of date: ...", "not run", "not checked: <why>"; "" unasked
    out_of_date: bool = False  # a run with that config would redo (part of) this stage
    records: dict = field(default_factory=dict, repr=False)  # chunk -> ChunkRecord, as read for these numbers

    @property
    def done(self) -> bool:
        return self.created > 0 if self.whole else self.chunks_done > 0

    @property
    def created_iso(self) -> str:
        return datetime.fromtimestamp(self.created, UTC).isoformat(timespec="seconds") if self.created else ""


def workspace_status(ws: Workspace, stages: tuple[str, ...],
                     expected: dict[str, dict[str, str] | str] | None = None,
                     manifest: list | None = None) -> list[StageStatus]:
    """Per stage: committed chunks of the current chunking (from the manifest), ok/failed videos and their errors;
    whole-dataset stages: their record's time, fingerprint and seconds.

    ``expected`` (from ``stages.registry.expected_fingerprints``): per stage, chunk -> the fingerprint a run with some
    config would key the chunk on, or the reason it cannot be told. Then each stage's ``check`` says whether that run
    would redo it: a chunk missing, keyed differently, or no longer planned; or an upstream stage out of date.
    ``manifest``: the workspace's manifest rows where the caller has read them already (None: read here)."""
    manifest = read_manifest(ws) if manifest is None else manifest
    current = {row.chunk for row in manifest}
    out: dict[str, StageStatus] = {}
    for stage in stages:
        st = StageStatus(stage, whole=stage in WHOLE_DATASET_STAGES)
        if st.whole:
            rec = ws.read_record(stage, ALL)
            if rec is not None:
                st.created, st.fingerprint, st.seconds = rec.created, rec.fingerprint, rec.seconds
                st.chunks_done = st.chunks_expected = 1
            records = {ALL: rec} if rec is not None else {}
        elif stage in NAMED_RECORD_STAGES:
            records = {c: r for c, r in ws.records(stage).items() if chunk_count(c) is None}
            want = expected.get(stage) if expected is not None else None
            st.chunks_done = len(records) if not isinstance(want, dict) else len(set(records) & set(want))
            st.chunks_expected = len(want) if isinstance(want, dict) else len(records)
        else:
            records = {c: r for c, r in ws.records(stage).items()
                       if chunk_count(c) is not None and (not current or c in current)}
            st.chunks_done = len(records)
            st.chunks_expected = len(current)
            for rec in records.values():
                for vid, info in rec.videos.items():
                    if info.get("status") == "ok":
                        st.videos_ok += 1
                        st.videos_without_boxes += bool(info.get("no_boxes"))
                    else:
                        st.videos_failed += 1
                        st.videos_retryable += info.get("status") == STATUS_RETRYABLE
                        st.errors[vid] = info.get("error", "")
        st.records = records
        if expected is not None and stage not in expected:
            st.check = "not checked: not one of the config's stages"
        elif expected is not None:
            _check(st, {c: r.fingerprint for c, r in records.items()}, expected[stage], out)
        out[stage] = st
    return list(out.values())


def _check(st: StageStatus, have: dict[str, str], want: dict[str, str] | str,
           earlier: dict[str, StageStatus]) -> None:
    stale = [u for u in UPSTREAM.get(st.stage, ()) if u in earlier and earlier[u].out_of_date]
    if isinstance(want, str):
        st.check = f"not checked: {want}"
        if stale:
            st.out_of_date, st.check = True, f"out of date: {', '.join(stale)} out of date ({st.check})"
        return
    if not have:
        st.out_of_date, st.check = bool(want), "not run" if want else "nothing to run"
        return
    missing = sorted(set(want) - set(have))
    differ = sorted(c for c in set(want) & set(have) if want[c] != have[c])
    extra = sorted(set(have) - set(want)) if st.stage not in NAMED_RECORD_STAGES else []
    reasons = []
    if differ:
        reasons.append(f"{len(differ)} of {len(want)} chunks keyed differently")
    if missing:
        reasons.append(f"{len(missing)} chunks not run")
    if extra:
        reasons.append(f"{len(extra)} chunks no longer planned")
    if stale:
        reasons.append(f"{', '.join(stale)} out of date")
    st.out_of_date = bool(reasons)
    st.check = "out of date: " + "; ".join(reasons) if reasons else "up to date"
