"""Artifact names: every artifact of a stage is keyed ``idtprior-<workspace>-<stage>-<what>``, so two workspaces'
runs never overwrite each other's in the Prefect UI."""

import hashlib
import re

from idtprior.storage import Workspace

ARTIFACT_PREFIX = "idtprior"


def _slug(text: str) -> str:
    """Lowercase letters, digits and single dashes only (Prefect's rule for artifact keys)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")


def workspace_slug(ws: "Workspace | str") -> str:
    """The workspace's folder name slugified, plus 6 hex chars of sha1 of its URL: two workspaces with one folder
    name (``/a/demo``, ``/b/demo``) on one server get different keys, the same workspace always the same one."""
    url = ws.url if isinstance(ws, Workspace) else _workspace_url(ws)
    name = _slug(url.rstrip("/").rsplit("/", 1)[-1])[:40].strip("-") or "workspace"
    return f"{name}-{hashlib.sha1(url.encode()).hexdigest()[:6]}"


def _workspace_url(path: str) -> str:
    """``Workspace(path).url`` (one key per workspace however it is spelled), without creating a local folder."""
    import fsspec

    fs, local = fsspec.core.url_to_fs(str(path))
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        from pathlib import Path

        return str(Path(local).resolve())
    return Workspace(path).url


def artifact_key(ws: "Workspace | str", stage: str, what: str) -> str:
    """The key of a stage's artifact: ``idtprior-<workspace slug>-<stage>-<what>`` (``what``: summary, failures,
    progress, ...), so one workspace's history of one artifact stays together on a shared server and apart from
    every other workspace's."""
    if not _slug(stage) or not _slug(what):
        raise ValueError(f"artifact_key: stage {stage!r} and what {what!r} must hold a letter or digit")
    return f"{ARTIFACT_PREFIX}-{workspace_slug(ws)}-{_slug(stage)}-{_slug(what)}"
