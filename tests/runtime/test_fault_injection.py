"""The test-only fault hook of ``run_chunk``: ``IDTPRIOR_FAULT="<stage>:<chunk>:once"`` fails one chunk once per
workspace, before its commit, and is never taken for a transient fault."""

import pytest

from idtprior.runtime.errors import is_transient
from idtprior.runtime.worker import run_chunk
from idtprior.storage import Workspace
from idtprior.testing import FAULT_ENV, InjectedFault


def _square(video_id: str, workspace: str, stage: str, chunk: str, version: str, x: int) -> dict:
    return {"square": x * x}


def _run(ws: Workspace, chunk: str, fingerprint: str = "fp1"):
    return run_chunk(ws.url, "decode", chunk, fingerprint, {"a": (2,), "b": (3,)}, _square, progress=False)


def test_fault_fires_once_per_workspace_before_the_commit(tmp_path, monkeypatch):
    ws = Workspace(str(tmp_path / "ws"))
    monkeypatch.setenv(FAULT_ENV, "decode:0001-of-0004:once")
    # another chunk of the stage is untouched by the hook
    other = _run(ws, "0000-of-0004")
    assert other.videos["a"]["square"] == 4
    with pytest.raises(InjectedFault, match=r"decode 0001-of-0004: fault injected by IDTPRIOR_FAULT"):
        _run(ws, "0001-of-0004")
    # nothing committed for the failed chunk; the marker says it fired
    assert ws.read_record("decode", "0001-of-0004") is None
    assert ws.fs.exists(ws.path("faults", "decode-0001-of-0004"))
    # a second try (a Retry: a new call, the env still set) commits
    rec = _run(ws, "0001-of-0004")
    assert rec.videos == {"a": {"status": "ok", "square": 4}, "b": {"status": "ok", "square": 9}}
    assert ws.read_record("decode", "0001-of-0004").fingerprint == "fp1"
    # and so does a changed chunk later: the fault is spent for this workspace
    assert _run(ws, "0001-of-0004", fingerprint="fp2").fingerprint == "fp2"
    # a fresh workspace gets its own fault
    with pytest.raises(InjectedFault):
        _run(Workspace(str(tmp_path / "ws2")), "0001-of-0004")


def test_fault_inactive_when_unset_or_for_another_stage(tmp_path, monkeypatch):
    ws = Workspace(str(tmp_path / "ws"))
    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert _run(ws, "0001-of-0004").n_ok == 2
    monkeypatch.setenv(FAULT_ENV, "idt:0002-of-0004:once")
    assert _run(ws, "0002-of-0004").n_ok == 2
    assert not ws.fs.exists(ws.path("faults"))


def test_bad_fault_spec_names_the_value(tmp_path, monkeypatch):
    ws = Workspace(str(tmp_path / "ws"))
    monkeypatch.setenv(FAULT_ENV, "decode:0001-of-0004:always")
    with pytest.raises(ValueError, match=r"IDTPRIOR_FAULT='decode:0001-of-0004:always': expected"):
        _run(ws, "0001-of-0004")


def test_injected_fault_is_never_transient():
    # a RuntimeError, not an OSError, and listed explicitly: the transient-retry rule must never retry it
    assert not is_transient(InjectedFault("x"))
    assert not isinstance(InjectedFault("x"), OSError)
