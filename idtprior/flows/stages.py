"""One flow per stage, so a single stage can be rerun from the UI or the CLI after a failure.

No ``from __future__ import annotations`` here: it breaks pydantic parameters under ``flow.serve()``.
"""

import functools
from pathlib import Path

import numpy as np
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from idtprior.config import ConfigError, PipelineConfig
from idtprior.datasets.lists import list_source, printable, read_labels, within_roots
from idtprior.flows.common import (artifact_key, dask_cluster, drop_stale_records, group_by_chunk, provenance_lines,
                                   rebuild_manifest, report_stage, run_chunks, with_legacy_keys)
from idtprior.flows.runs import missing_stage, stage_flow
from idtprior.keyscheme import legacy, upstream_key
from idtprior.storage import StatCache, Workspace, chunk_of, file_fingerprint, hash_json, read_manifest
from idtprior.storage.upstream import planned
from idtprior.tasks import decode as decode_tasks
from idtprior.tasks import detect as detect_tasks
from idtprior.tasks import encode as encode_tasks
from idtprior.tasks import idt as idt_tasks
from idtprior.tasks import ingest as ingest_tasks
from idtprior.tasks.codeprint import code_key
from idtprior.tasks.common import chunk_fingerprint, run_logger
from idtprior.tasks.idt import choose_sample


def plan_ingest(config: PipelineConfig, ws: Workspace, remember: bool = True,
                skipped: list | None = None) -> dict[str, dict]:
    """Ingest's chunks: chunk -> {"fingerprint", "videos", "config"} (videos: id -> path, label, split and the file's
    content fingerprint; "refused": why the listing refused an entry, which then fails without being read). Runs
    nothing. ``skipped``: extended with the source's lines that named no video (``lists.SkippedLine``).

    A chunk's key hashes its videos' paths, labels, splits and CONTENT fingerprints: a touched file (new mtime and
    ctime, same bytes) is read again but re-probes nothing, a rewritten one re-probes its chunk even with its mtime set
    back. Files whose (size, mtime, ctime, inode) did not change are not read at all (``StatCache``). ``remember``:
    store what was read so the next run reads nothing (``idtprior status`` passes False: it writes nothing)."""
    cfg = config.ingest
    if not cfg.source:
        raise ConfigError("ingest.source is not set: give a folder of videos or a list file")
    if cfg.allowed_roots is not None:
        for key in ("source", "labels_file"):
            value = getattr(cfg, key)
            if value and not within_roots(value, cfg.allowed_roots):
                raise ConfigError(f"ingest.{key} {printable(value, 300)!r} is outside ingest.allowed_roots "
                                  f"{list(cfg.allowed_roots)}")
    listed = list_source(cfg.source, cfg.source_format, cfg.video_root, cfg.extensions, cfg.allowed_roots)
    if skipped is not None:
        skipped.extend(listed.skipped)
    labels = read_labels(cfg.labels_file) if cfg.labels_file else {}
    listing = {}
    for e in listed.entries:
        label, split = labels.get(e.video_id, (e.label, e.split))
        listing[e.video_id] = {"path": e.path, "label": label, "split": split, **({"refused": e.error} if e.error
                                                                                    else {})}
    chunks = {vid: chunk_of(vid, cfg.num_chunks) for vid in listing}
    stats = StatCache(ws, cfg.full_hash)
    content = stats.fingerprints({v["path"]: chunks[vid] for vid, v in listing.items() if "refused" not in v})
    content.update({v["path"]: ingest_tasks.REFUSED_FINGERPRINT for v in listing.values() if "refused" in v})
    if remember:
        stats.save()
        get_run_logger().info(f"ingest: read {stats.reads} of {len(listing)} files (new, or stat changed since read)")
    plans = {}
    for chunk, videos in group_by_chunk(listing, chunks).items():
        videos = {vid: {**v, "fingerprint": content[v["path"]]} for vid, v in videos.items()}
        inputs = {vid: hash_json(v) for vid, v in videos.items()}
        fp = chunk_fingerprint("ingest", chunk, inputs, cfg.config_hash(), code_key("ingest"))
        plans[chunk] = {"fingerprint": fp, "videos": videos, "config": cfg}
    return with_legacy_keys(ws, "ingest", plans, lambda: plan_ingest(config, ws, remember=False))


@stage_flow("ingest")
def ingest_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """List the source, probe every video per chunk, rebuild the manifest (with duplicates) and report failures."""
    cfg = config.ingest
    ws = Workspace(config.workspace)
    skipped: list = []
    plans = plan_ingest(config, ws, skipped=skipped)
    unusable = [f"{s.where}: {s.reason}" for s in skipped if not s.ignorable]  # blank and comment lines: counted
    if unusable:
        more = f"; ... {len(unusable) - 3} more" if len(unusable) > 3 else ""
        get_run_logger().warning(f"ingest: skipped {len(unusable)} lines of the source that name no video (listed "
                                 f"in the failures artifact): {'; '.join(unusable[:3])}{more}")
    with dask_cluster(config.dask, dask_address) as address:
        records = run_chunks(ingest_tasks.ingest_chunk, ws, "ingest", {
            c: {**p, "dask_address": address} for c, p in plans.items()}, progress, config.chunk_concurrency)
    # Only now, with every chunk of this chunking committed, does it become the workspace's: a run that failed part-way
    # leaves the previous chunking current and whole. Every stage's records and data of another chunking go.
    removed = ws.set_chunking(cfg.num_chunks)
    if removed:
        get_run_logger().info(f"ingest: num_chunks is {cfg.num_chunks}; removed {len(removed)} records and stores of "
                              f"the previous chunking (later stages recompute theirs)")
    drop_stale_records(ws, "ingest", set(plans), cfg.num_chunks)
    rows = rebuild_manifest(ws)
    duplicates = [{"video_id": r.video_id, "error": r.error} for r in rows if r.duplicate_of]
    counts = report_stage(ws, "ingest", records, duplicates + ingest_tasks.skipped_report(skipped))
    counts["duplicates"] = len(duplicates)
    if skipped:
        counts["lines_skipped"] = len(skipped)
    return counts


def decode_code(config: PipelineConfig) -> str:
    """What the decode stage's keys hold of its code for the configured frame codec (``codeprint.code_key``)."""
    return code_key(stage_variant("decode", config))


def plan_decode(config: PipelineConfig, ws: Workspace) -> dict[str, dict]:
    """Decode's chunks: chunk -> the task's arguments, with the chunk's "fingerprint". Runs nothing."""
    plans = _chunk_plans("decode", ok_rows(ws), lambda r: (r.path, r.fps), config.decode.config_hash(),
                         decode_code(config), {"config": config.decode})
    return with_legacy_keys(ws, "decode", plans, lambda: plan_decode(config, ws))


@stage_flow("decode")
def decode_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """Decode every ok video of the manifest into the frame store, chunk by chunk."""
    ws = Workspace(config.workspace)
    plans = plan_decode(config, ws)
    task = decode_tasks.decode_chunk_jpeg if config.decode.codec == "jpeg" else decode_tasks.decode_chunk
    records = _run_stage(task, ws, "decode", plans, config, dask_address, progress)
    counts = report_stage(ws, "decode", records)
    publish_pictures(ws, "decode", "decode_markdown", seed=config.idt.seed)
    return counts


def plan_detect(config: PipelineConfig, ws: Workspace, remember: bool = True) -> dict[str, dict]:
    """Detect's chunks: chunk -> the task's arguments, with the chunk's "fingerprint". Runs nothing (``remember``:
    store the imported files' stat cache; False in ``idtprior status``, which writes nothing)."""
    cfg = config.detect
    cfg_hash = cfg.config_hash()
    if not legacy():  # the detector's model files by content (legacy keys held the weights' path, in the config)
        cfg_hash = hash_json([cfg_hash, [model_fingerprint(p) for p in detect_tasks.model_files(cfg)]])
    plans = _chunk_plans("detect", ok_rows(ws), lambda r: r.path, cfg_hash, code_key("detect"), {"config": cfg})
    if cfg.bb_folder:  # the imported files are inputs too
        plans = _with_imported_files(ws, plans, lambda v, p: detect_tasks.bb_file(cfg.bb_folder, v, p), "detect-bb",
                                     remember)
    return with_legacy_keys(ws, "detect", plans, lambda: plan_detect(config, ws, remember=False))


def model_fingerprint(path) -> str:
    """A model file's content fingerprint (every byte), computed once per (path, size, mtime) in this process."""
    try:
        st = Path(path).stat()
    except OSError:
        return "missing"  # the backend check names the file before any chunk runs
    return _model_fingerprint(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _model_fingerprint(path: str, size: int, mtime_ns: int) -> str:
    return file_fingerprint(path, full=True)


@stage_flow("detect")
def detect_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """Person boxes per frame of every ok video (or imported from bb-files with ``detect.bb_folder``)."""
    ws = Workspace(config.workspace)
    ok_rows(ws)  # no manifest: say so before checking the backend
    detect_tasks.check_backend(config.detect)
    plans = plan_detect(config, ws)
    records = _run_stage(detect_tasks.detect_chunk, ws, "detect", plans, config, dask_address, progress)
    counts = report_stage(ws, "detect", records)
    infos = [v for r in records.values() for v in r.videos.values() if v.get("status") == "ok"]
    frames = sum(v.get("frames", 0) for v in infos)
    counts["frames_with_person"] = round(sum(v.get("frames_with_person", 0) for v in infos) / max(frames, 1), 4)
    publish_pictures(ws, "detect", "detect_markdown", seed=config.idt.seed)
    return counts


def _with_boxes(ws: Workspace, plans: dict[str, dict]) -> dict[str, dict]:
    """Point each chunk's plan at the chunk's person boxes where the detect stage has run (``boxes_key``: the key of
    the detect record the task reads, and checks), and make the boxes part of the chunk's fingerprint (new boxes rerun
    IDT; without a detect stage nothing changes)."""
    for chunk, plan in plans.items():
        rec = ws.read_record("detect", chunk)
        if rec is not None:
            plan["fingerprint"] = hash_json([plan["fingerprint"], "boxes", upstream_key(rec)])
            plan["boxes_key"] = rec.content_key
            plan.setdefault("upstream", {})["detect"] = {chunk: rec.content_key}
    return plans


def _with_imported_files(ws: Workspace, plans: dict[str, dict], find, cache: str, remember: bool,
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


def _with_text_files(ws: Workspace, stage: str, plans: dict[str, dict], folder: str,
                     remember: bool) -> dict[str, dict]:
    """Each video's imported IDT text file (``encode.idt_text_folder``) in its chunk's fingerprint, by content; the
    stage keeps its own stat cache (the sample reads a subset of encode's files)."""
    return _with_imported_files(ws, plans, lambda v, p: idt_tasks.idt_text_file(folder, v, p), f"idt-text-{stage}",
                                remember, "idt_text")


def _run_stage(task, ws: Workspace, stage: str, plans: dict, config: PipelineConfig, dask_address: str | None,
               progress: bool) -> dict:
    """Run a per-video stage's chunks on the Dask cluster, drop records of emptied chunks, rebuild the manifest."""
    with dask_cluster(config.dask, dask_address) as address:
        records = run_chunks(task, ws, stage, {c: {**p, "dask_address": address} for c, p in plans.items()},
                             progress, config.chunk_concurrency)
    drop_stale_records(ws, stage, set(plans), config.ingest.num_chunks)
    rebuild_manifest(ws)
    return records


def stage_pictures(stage: str, build: str, *args, **kwargs) -> str:
    """The markdown of ``idtprior.flows.artifacts.<build>(*args, **kwargs)`` (a line saying why where it fails):
    imported here, not at the top, because the pictures import torch."""
    from idtprior.flows import artifacts

    return artifacts.stage_pictures(stage, getattr(artifacts, build), *args, **kwargs)


def publish_pictures(ws: Workspace, stage: str, build: str, *args, **kwargs) -> None:
    """The stage's pictures as its ``pictures`` artifact, next to the ``summary`` that ``report_stage`` writes."""
    create_markdown_artifact(key=artifact_key(ws, stage, "pictures"),
                             markdown=f"## {stage}: pictures\n\n{stage_pictures(stage, build, ws, *args, **kwargs)}",
                             description=f"{stage}: what it stored, drawn")


def check_settings(stage: str, build, *sections) -> None:
    """Build a stage's core parameters before any video runs: a setting the core refuses (a ValueError or TypeError
    of the parameters, e.g. ``idt.track_length`` not a multiple of ``nt_cell``) fails the stage here, naming the
    stage and the message, instead of failing every video one by one and being recorded as bad videos."""
    try:
        build(*sections)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{stage}: the settings are refused before any video runs: {e}") from e


def ok_rows(ws: Workspace) -> list:
    rows = [r for r in read_manifest(ws) if r.ok]
    if not rows:
        raise missing_stage(ws, "the manifest has no usable video", "ingest")
    return rows


def _chunk_plans(stage: str, rows: list, value, config_hash: str, code: str, extra: dict) -> dict[str, dict]:
    plans = {}
    chunks = {r.video_id: r.chunk for r in rows}
    fps = {r.video_id: r.fingerprint for r in rows}
    for chunk, vids in group_by_chunk({r.video_id: value(r) for r in rows}, chunks).items():
        fp = chunk_fingerprint(stage, chunk, {v: fps[v] for v in vids}, config_hash, code)
        plans[chunk] = {"fingerprint": fp, "videos": vids, **extra}
    return plans


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


def plan_idt(config: PipelineConfig, ws: Workspace, remember: bool = True) -> dict[str, dict]:
    """The IDT sample's chunks: chunk -> the task's arguments, with the chunk's "fingerprint". Runs nothing."""
    rows = ok_rows(ws)
    chosen = choose_sample([r.video_id for r in rows], config.idt.sample_videos, config.idt.seed)
    rows = [r for r in rows if r.video_id in chosen]
    text_folder = config.encode.idt_text_folder  # imported rows: the sample is drawn from the files encode reads
    cfg_hash = hash_json([config.idt.config_hash(), idt_tasks.params_key(config.idt)])
    extra = {"config": config.idt} if torch_backend(config) else {"config": config.idt, "text_folder": text_folder}
    plans = _chunk_plans("idt", rows, lambda r: r.path, cfg_hash, code_key(idt_code("idt", config)), extra)
    plans = _with_text_files(ws, "idt", plans, text_folder, remember) if text_folder else _with_boxes(ws, plans)
    return with_legacy_keys(ws, "idt", plans, lambda: plan_idt(config, ws, remember=False))


@stage_flow("idt")
def idt_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """IDT of a seeded sample of S videos (R seeded rows each), the codebook's training data."""
    check_settings("idt", idt_tasks.idt_params, config.idt)
    check_idt_backend("idt", config)
    ws = Workspace(config.workspace)
    plans = plan_idt(config, ws)
    task = idt_tasks.idt_sample_chunk_torch if torch_backend(config) else idt_tasks.idt_sample_chunk
    records = _run_stage(task, ws, "idt", plans, config, dask_address, progress)
    counts = report_stage(ws, "idt", records)
    counts["sample_rows"] = sum(v.get("kept", 0) for r in records.values() for v in r.videos.values())
    publish_pictures(ws, "idt", "idt_markdown", config.idt, seed=config.idt.seed)
    return counts


def plan_fit_codebook(config: PipelineConfig, ws: Workspace) -> dict[str, dict]:
    """The codebook's one chunk (``all``) -> the task's arguments, with its "fingerprint". Runs nothing."""
    sample = ws.records("idt")
    inputs = {c: upstream_key(r) for c, r in sample.items()}
    if not inputs:
        raise missing_stage(ws, "no IDT sample", "idt")
    fp = chunk_fingerprint("fit_codebook", encode_tasks.ALL, inputs, config.codebook.config_hash(),
                           code_key("fit_codebook"))
    plan = {"fingerprint": fp, "config": config.codebook, "upstream": {"idt": planned(sample)}}
    return with_legacy_keys(ws, "fit_codebook", {encode_tasks.ALL: plan}, lambda: plan_fit_codebook(config, ws))


@stage_flow("fit_codebook")
def fit_codebook_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """PCA + GMM on the IDT sample; the codebook (with its sketch seed) goes to the workspace."""
    check_settings("fit_codebook", encode_tasks.codebook_params, config.codebook)
    ws = Workspace(config.workspace)
    records = run_chunks(encode_tasks.fit_codebook_task, ws, "fit_codebook", plan_fit_codebook(config, ws), progress)
    info = records[encode_tasks.ALL].videos["codebook"]
    if info.get("warning"):
        get_run_logger().warning(info["warning"])
    create_markdown_artifact(key=artifact_key(ws, "fit_codebook", "summary"), markdown=(
        f"## codebook\n\n{info['rows']} sample descriptors, GMM {config.codebook.gmm_components} components, "
        f"PCA {config.codebook.pca_mode}, Fisher vector dim {info['fv_dim']}, sketch {config.codebook.sketch_dim}"
        + (f"\n\n**Warning:** {info['warning']}" if info.get("warning") else "")
        + "".join(f"\n\n- {line}" for line in provenance_lines(ws, "fit_codebook", records))
        + "\n\n" + stage_pictures("fit_codebook", "fit_codebook_markdown", ws)))
    return {"stage": "fit_codebook", "chunks": 1, "videos_ok": 0, "videos_failed": 0, **{
        k: info[k] for k in ("rows", "fv_dim")}}


def plan_encode(config: PipelineConfig, ws: Workspace, remember: bool = True) -> dict[str, dict]:
    """Encode's chunks: chunk -> the task's arguments, with the chunk's "fingerprint". Runs nothing."""
    rows = ok_rows(ws)
    book = ws.read_record("fit_codebook", encode_tasks.ALL)
    if book is None:
        raise missing_stage(ws, "no codebook", "fit_codebook")
    cfg_hash = hash_json([config.idt.config_hash(), idt_tasks.params_key(config.idt), config.encode.config_hash(),
                          upstream_key(book)])
    plans = _chunk_plans("encode", rows, lambda r: r.path, cfg_hash, code_key(idt_code("encode", config)),
                         {"idt": config.idt, "config": config.encode})
    for plan in plans.values():  # the codebook the keys hold, which each task checks it reads
        plan["upstream"] = {"fit_codebook": {encode_tasks.ALL: book.content_key}}
    if config.encode.idt_text_folder:  # rows read from text files: the files are inputs, the boxes play no part
        plans = _with_text_files(ws, "encode", plans, config.encode.idt_text_folder, remember)
    else:
        plans = _with_boxes(ws, plans)
    return with_legacy_keys(ws, "encode", plans, lambda: plan_encode(config, ws, remember=False))


def sketches_fingerprint(records: dict, ids: list[str]) -> str:
    """The key of encode's assembled (N, S) sketches: the encode chunks' keys and the manifest's ok ids, in order."""
    return hash_json({"encode": {c: upstream_key(r) for c, r in records.items()}, "ids": ids})


@stage_flow("encode")
def encode_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """Per video: IDT -> Fisher vector -> count sketch, per chunk, rows aligned with the manifest."""
    check_settings("encode", idt_tasks.idt_params, config.idt)
    check_idt_backend("encode", config)
    ws = Workspace(config.workspace)
    plans = plan_encode(config, ws)
    rows = ok_rows(ws)
    task = encode_tasks.encode_chunk_torch if torch_backend(config) else encode_tasks.encode_chunk
    records = _run_stage(task, ws, "encode", plans, config, dask_address, progress)
    invalid = [{"video_id": v, "error": i.get("note", "")} for r in records.values() for v, i in r.videos.items()
               if i.get("status") == "ok" and not i.get("valid")]
    counts = report_stage(ws, "encode", records, invalid)
    counts["invalid_sketches"] = len(invalid)
    ids = [r.video_id for r in rows]
    encode_tasks.assemble_sketches(ws, ids, sketches_fingerprint(records, ids), expected=planned(records))
    publish_pictures(ws, "encode", "encode_markdown")
    return counts


def plan_cluster(config: PipelineConfig, ws: Workspace) -> dict[str, dict]:
    """Clustering's one chunk (``all``) -> the task's arguments, with its "fingerprint". Runs nothing."""
    ids = [r.video_id for r in ok_rows(ws)]
    records = ws.records("encode")
    inputs = {c: upstream_key(r) for c, r in records.items()}
    if not inputs:
        raise missing_stage(ws, "no sketches", "encode")
    fp = chunk_fingerprint("cluster", encode_tasks.ALL, {"encode": hash_json(inputs), "ids": hash_json(ids)},
                           config.cluster.config_hash(), code_key("cluster"))
    return with_legacy_keys(ws, "cluster", {encode_tasks.ALL: {"fingerprint": fp, "video_ids": ids,
                                                               "config": config.cluster,
                                                               "upstream": {"encode": planned(records)}}},
                            lambda: plan_cluster(config, ws))


@stage_flow("cluster")
def cluster_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """K-means on the sketches; cluster-size statistics, and NMI / purity where the manifest has labels."""
    ws = Workspace(config.workspace)
    rows = ok_rows(ws)
    records = run_chunks(encode_tasks.cluster_task, ws, "cluster", plan_cluster(config, ws), progress)
    stats = dict(records[encode_tasks.ALL].videos["clusters"])
    labels, label_ids = encode_tasks.read_cluster_labels(ws)
    truth = {r.video_id: r.label for r in rows if r.label}
    if truth:
        stats.update(cluster_agreement(labels, label_ids, truth))
    rows_md = "\n".join(f"| {k} | {v} |" for k, v in stats.items() if k != "status")
    pictures = stage_pictures("cluster", "cluster_markdown", ws, config.idt, seed=config.cluster.seed, stats=stats)
    create_markdown_artifact(key=artifact_key(ws, "cluster", "summary"),
                             markdown=f"## clusters\n\n| | |\n|---|---|\n{rows_md}\n\n{pictures}" + "".join(
                                 f"\n\n- {line}" for line in provenance_lines(ws, "cluster", records)))
    get_run_logger().info(f"cluster: {stats}")
    return {"stage": "cluster", "chunks": 1, "videos_ok": stats["videos"], "videos_failed": 0,
            **{k: v for k, v in stats.items() if k in ("nmi", "purity", "close_pairs", "close_precision",
                                                       "same_label_pairs", "empty_clusters", "largest_cluster")}}


def cluster_agreement(labels, label_ids: list[str], truth: dict[str, str]) -> dict:
    """Mean NMI and purity of the m clusterings against the known labels (videos with a label and a cluster)."""
    from sklearn.metrics import normalized_mutual_info_score

    idx = [i for i, v in enumerate(label_ids) if v in truth]
    names = [truth[label_ids[i]] for i in idx]
    nmis, purities = [], []
    for run in labels:
        pred = run[idx]
        keep = pred >= 0
        y = [n for n, k in zip(names, keep) if k]
        p = pred[keep]
        nmis.append(normalized_mutual_info_score(y, p))
        # purity: each cluster counts its most common label (a cluster x label contingency table, not a loop per
        # cluster over every video: K=6000 x N=235k at the paper's scale)
        _, clusters = np.unique(p, return_inverse=True)
        classes = _codes(y)
        table = np.zeros((clusters.max(initial=-1) + 1, classes.max(initial=-1) + 1), np.int64)
        np.add.at(table, (clusters, classes), 1)
        purities.append(int(table.max(axis=1, initial=0).sum()) / max(len(y), 1))
    out = {"nmi": round(float(sum(nmis) / len(nmis)), 4), "purity": round(float(sum(purities) / len(purities)), 4)}
    out.update(close_neighbour_agreement(labels[:, idx], names))
    return out


def _codes(values: list[str]) -> np.ndarray:
    """Labels as int codes (one per distinct string)."""
    return np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)[1]


def _pairs_sharing(*keys: np.ndarray) -> int:
    """Unordered pairs of rows equal in every key array."""
    _, counts = np.unique(np.stack(keys, 1), axis=0, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def close_neighbour_agreement(labels: np.ndarray, truth: list[str]) -> dict:
    """How LA would use the m clusterings: its close neighbours of a video are the videos that share a cluster with it
    in ANY run. Returns the fraction of video pairs that are close (``close_pairs``), the fraction of those with the
    same known label (``close_precision``), and that fraction over all pairs (``same_label_pairs``, the chance level).

    Counted by inclusion-exclusion over the subsets of runs (pairs sharing a cluster in every run of a subset are
    pairs with equal label tuples), so O(2^m N log N), not O(N^2); skipped (``{}``) beyond 8 runs. Label -1 (no
    sketch) is nobody's neighbour.
    """
    labels = np.asarray(labels, dtype=np.int64)
    m, n = labels.shape
    if n < 2 or m > 8:
        return {}
    labels = np.where(labels < 0, -1 - np.arange(n)[None], labels)  # a cluster of its own
    y = _codes(truth)
    close = close_same = 0
    for mask in range(1, 2**m):
        runs = [labels[r] for r in range(m) if mask >> r & 1]
        sign = 1 if len(runs) % 2 else -1
        close += sign * _pairs_sharing(*runs)
        close_same += sign * _pairs_sharing(*runs, y)
    total = n * (n - 1) // 2
    return {"close_pairs": round(close / total, 4), "close_precision": round(close_same / max(close, 1), 4),
            "same_label_pairs": round(_pairs_sharing(y) / total, 4)}


def stage_variant(stage: str, config: PipelineConfig) -> str:
    """The code variant a stage runs with ``config`` (``codeprint.STAGE_ROOTS``)."""
    if stage == "decode":
        return "decode@jpeg" if config.decode.codec == "jpeg" else "decode"
    if stage in ("idt", "encode"):
        return idt_code(stage, config)
    return "encode" if stage == encode_tasks.SKETCHES else stage


STAGE_FLOWS = {"ingest": ingest_flow, "decode": decode_flow, "detect": detect_flow, "idt": idt_flow,
               "fit_codebook": fit_codebook_flow, "encode": encode_flow, "cluster": cluster_flow}
