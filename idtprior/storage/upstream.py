"""What a task reads is what its key was planned from.

A stage's keys are computed when it is planned, from the upstream records there then (the codebook's key in every
encode chunk's key, the cluster labels' in a training stage's). Its tasks read upstream later, when they run: a
codebook fitted again in between (a run started from the UI while encode runs) would be read under the old key, and
a record committed so would be served as up to date once the old settings are back. So each task receives the upstream
keys its key was planned from (``upstream``: stage -> chunk -> key, the records' ``fingerprint``) and checks them:

- when it opens an upstream store (``checked_record``; a reader of a whole stage, ``checked_records``, also finds no
  chunk added or gone), and
- before any work and again before it commits (``check_upstream``), so a record changed and changed back while it ran
  is caught too.

A mismatch raises ``UpstreamChanged``: the chunk fails, nothing is committed, no video is marked failed, and it is not
retried within the run (the planned keys are the task's parameters): the next run of the stage plans again from what
is there now and computes under the new keys. Callers that pass no expectation (tools that read a workspace as it is:
artifacts, ``idtprior export``) read the current records, unchecked.
"""

from idtprior.storage.workspace import ChunkRecord, Workspace

Upstream = dict[str, dict[str, str]]
"""stage -> chunk -> the key (``ChunkRecord.content_key``) a task's key was planned from."""


class UpstreamChanged(RuntimeError):
    """An upstream record a task reads is not the one its key was planned from (see the module doc)."""


def planned(records: dict[str, ChunkRecord]) -> dict[str, str]:
    """chunk -> key of ``records`` (a stage's records, or some of them), as a task's ``upstream`` holds them: the
    record's ``content_key`` (its key, and what retries of its failed videos changed)."""
    return {chunk: rec.content_key for chunk, rec in records.items()}


def _changed(reader: str, what: str, found: str, expected: str) -> UpstreamChanged:
    return UpstreamChanged(f"{reader}: upstream changed since planning: {what} is {found}, its key was planned from "
                           f"{expected}: nothing committed; rerun the stage (it plans again from what is there now)")


def _short(key: str | None) -> str:
    return f"keyed {key[:12]}" if key else "missing"


def checked_record(ws: Workspace, stage: str, chunk: str, expected: str | None, reader: str) -> ChunkRecord | None:
    """The record of ``stage``/``chunk`` (None when there is none), checked to be keyed ``expected`` when given:
    ``UpstreamChanged`` naming ``reader``, the record and both keys otherwise."""
    rec = ws.read_record(stage, chunk)
    if expected is not None and (rec is None or rec.content_key != expected):
        raise _changed(reader, f"{stage} {chunk}", _short(rec.content_key if rec else None), _short(expected))
    return rec


def checked_records(ws: Workspace, stage: str, expected: dict[str, str] | None, reader: str
                    ) -> dict[str, ChunkRecord]:
    """Every current record of ``stage``, checked to be exactly ``expected`` (the same chunks, each keyed as planned)
    when given: a reader of a whole stage must find no chunk added, gone or recomputed."""
    records = ws.records(stage)
    if expected is not None:
        found = planned(records)
        if found != expected:
            diff = sorted(c for c in set(found) | set(expected) if found.get(c) != expected.get(c))
            more = f" (+{len(diff) - 1} more chunks)" if len(diff) > 1 else ""
            raise _changed(reader, f"{stage} {diff[0]}{more}", _short(found.get(diff[0])),
                           _short(expected.get(diff[0])))
    return records


def check_upstream(ws: Workspace, upstream: Upstream | None, reader: str) -> None:
    """Every record named in ``upstream`` keyed as planned; ``UpstreamChanged`` for the first that is not."""
    for stage, chunks in sorted((upstream or {}).items()):
        for chunk, key in sorted(chunks.items()):
            checked_record(ws, stage, chunk, key, reader)
