"""What the stages share: the chunk plans of per-video stages, a stage run on Dask, the manifest's usable videos, the
IDT backend choice, settings checked before any video runs, and the pictures' publication.

``ALL`` names the one chunk of a whole-dataset stage (fit_codebook, cluster); ``SKETCHES`` the (N, S) array assembled
from the encode chunks."""

from prefect.artifacts import create_markdown_artifact

from idtprior.config import PipelineConfig
from idtprior.config.base import ConfigError
from idtprior.runtime.artifacts import artifact_key
from idtprior.runtime.dask import dask_cluster, run_chunks
from idtprior.runtime.keys import chunk_fingerprint
from idtprior.runtime.records import drop_stale_records, group_by_chunk, rebuild_manifest
from idtprior.runtime.runs import missing_stage
from idtprior.runtime.worker import run_logger
from idtprior.storage import StatCache, Workspace, hash_json, read_manifest

ALL = "all"  # the chunk name of whole-dataset stages (codebook, cluster)


SKETCHES = "sketches"  # the whole-dataset (N, S) array assembled from the encode chunks


def chunk_plans(stage: str, rows: list, value, config_hash: str, code: str, extra: dict) -> dict[str, dict]:
    plans = {}
    chunks = {r.video_id: r.chunk for r in rows}
    fps = {r.video_id: r.fingerprint for r in rows}
    for chunk, vids in group_by_chunk({r.video_id: value(r) for r in rows}, chunks).items():
        fp = chunk_fingerprint(stage, chunk, {v: fps[v] for v in vids}, config_hash, code)
        plans[chunk] = {"fingerprint": fp, "videos": vids, **extra}
    return plans


def ok_rows(ws: Workspace) -> list:
    rows = [r for r in read_manifest(ws) if r.ok]
    if not rows:
        raise missing_stage(ws, "the manifest has no usable video", "ingest")
    return rows


def with_imported_files(ws: Workspace, plans: dict[str, dict], find, cache: str, remember: bool,
                         *tag: str) -> dict[str, dict]:
    """Make each video's imported file (``find(video_id, path) -> Path | None``) part of its chunk's fingerprint, by
    content: a replaced file reruns its chunk, and only its chunk, even a same-size edit with its mtime set back. The
    stat cache ``cache`` keeps a rerun over unchanged files from reading them (``remember``: store what was read)."""
    stats = StatCache(ws, name=cache)
    for chunk, plan in plans.items():
        files = {v: find(v, p) for v, p in plan["videos"].items()}
        known = stats.fingerprints({str(f): chunk for f in files.values() if f})
        content = {v: known[str(f)] if f else "missing" for v, f in files.items()}
        plan["fingerprint"] = hash_json([plan["fingerprint"], *tag, content])
    if remember:
        stats.save()
    return plans


def run_stage(task, ws: Workspace, stage: str, plans: dict, config: PipelineConfig, dask_address: str | None,
               progress: bool) -> dict:
    """Run a per-video stage's chunks on the Dask cluster, drop records of emptied chunks, rebuild the manifest."""
    with dask_cluster(config.dask, dask_address) as address:
        records = run_chunks(task, ws, stage, {c: {**p, "dask_address": address} for c, p in plans.items()},
                             progress, config.chunk_concurrency)
    drop_stale_records(ws, stage, set(plans), config.ingest.num_chunks)
    rebuild_manifest(ws)
    return records


def check_settings(stage: str, build, *sections) -> None:
    """Build a stage's core parameters before any video runs: a setting the core refuses (a ValueError or TypeError
    of the parameters, e.g. ``idt.track_length`` not a multiple of ``nt_cell``) fails the stage here, naming the
    stage and the message, instead of failing every video one by one and being recorded as bad videos."""
    try:
        build(*sections)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{stage}: the settings are refused before any video runs: {e}") from e


def stage_pictures(stage: str, build, *args, **kwargs) -> str:
    """The markdown of the stage's picture builder ``build(*args, **kwargs)``, a line saying why where it fails
    (``pictures.stage_pictures``: imported here, not at the top, because the pictures import torch)."""
    from idtprior.stages import pictures

    if not callable(build):  # a programming error, not a picture that could not be drawn: never swallowed
        raise TypeError(f"{stage}: the picture builder must be a function, got {build!r}")
    return pictures.stage_pictures(stage, build, *args, **kwargs)


def publish_pictures(ws: Workspace, stage: str, build, *args, **kwargs) -> None:
    """The stage's pictures as its ``pictures`` artifact, next to the ``summary`` that ``report_stage`` writes."""
    create_markdown_artifact(key=artifact_key(ws, stage, "pictures"),
                             markdown=f"## {stage}: pictures\n\n{stage_pictures(stage, build, ws, *args, **kwargs)}",
                             description=f"{stage}: what it stored, drawn")


def torch_backend(config: PipelineConfig) -> bool:
    """True when the idt and encode stages extract with the torch backend (rows imported from the reference release's
    text files are read the same way with either backend, by the CPU tasks)."""
    return config.idt.backend == "torch" and not config.encode.idt_text_folder


def idt_code(stage: str, config: PipelineConfig) -> str:
    """The code roots of the idt or encode stage for the configured backend (``codeprint.STAGE_ROOTS``)."""
    return f"{stage}@torch" if torch_backend(config) else stage


def check_idt_backend(stage: str, config: PipelineConfig) -> None:
    """With the torch backend: torch imports and ``idt.device`` exists, checked before any video runs."""
    if not torch_backend(config):
        return
    try:
        import torch

        from idtprior.video.idt.torch_extract import resolve_device
    except ImportError as e:
        raise ConfigError(f"{stage}: idt.backend is 'torch' but torch does not import: {e}") from e
    try:
        device = resolve_device(config.idt.device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{stage}: idt.device {config.idt.device!r} is not a torch device: {e}") from e
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"{stage}: idt.device {config.idt.device!r}: this machine has "
                          f"{torch.cuda.device_count()} CUDA devices")
    if device.type == "cpu":
        run_logger().warning(f"{stage}: idt.backend 'torch' runs on the CPU here: it is for a GPU; on a CPU the 'cpu' "
                          f"backend is far faster (README: The IDT extractor)")


def stage_variant(stage: str, config: PipelineConfig) -> str:
    """The code variant a stage runs with ``config`` (``codeprint.STAGE_ROOTS``)."""
    if stage == "decode":
        return "decode@jpeg" if config.decode.codec == "jpeg" else "decode"
    if stage in ("idt", "encode"):
        return idt_code(stage, config)
    return "encode" if stage == SKETCHES else stage
