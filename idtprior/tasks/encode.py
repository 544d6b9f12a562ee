"""Codebook, encode and cluster stages: PCA + GMM on the IDT sample, per-video IDT -> Fisher vector -> count sketch
(fused, so raw descriptors are not stored unless asked), and K-means on the sketches."""

import warnings

import numpy as np
from prefect import task

from idtprior.config import ClusterConfig, CodebookConfig, EncodeConfig, IDTConfig
from idtprior.encoding import Codebook, CodebookParams, count_sketch, fisher_vector, kmeans
from idtprior.encoding.backend import to_device, to_numpy
from idtprior.encoding.codebook import SmallSampleWarning, fit_codebook_with_report
from idtprior.storage import ChunkRecord, Workspace
from idtprior.storage.integrity import array_options, reading
from idtprior.storage.upstream import Upstream, check_upstream, checked_record, checked_records
from idtprior.tasks.common import run_chunk, stamp
from idtprior.tasks.detect import chunk_boxes
from idtprior.tasks.idt import batch_idt, read_sample, video_rows

ALL = "all"  # the chunk name of whole-dataset stages (codebook, cluster)


def codebook_params(cfg: CodebookConfig) -> CodebookParams:
    return CodebookParams(n_components=cfg.gmm_components, pca_mode=cfg.pca_mode, pca_variance=cfg.pca_variance,
                          gmm_iters=cfg.gmm_iters, seed=cfg.seed, sketch_dim=cfg.sketch_dim, sketch_seed=cfg.seed)


def read_codebook(ws: Workspace, key: str | None = None, reader: str = "encode") -> Codebook:
    """The codebook; ``key``: the key of its record the reader's key was planned from (checked when given)."""
    rec = checked_record(ws, "fit_codebook", ALL, key, reader)
    if rec is None:
        raise KeyError(f"workspace {ws.url} has no codebook: run the fit_codebook stage first")
    group = ws.open_verified("fit_codebook", rec)
    with reading("fit_codebook", ALL):
        return Codebook.from_arrays({name: np.asarray(arr[...]) for name, arr in group.arrays()})


@task(name="fit-codebook", task_run_name="fit codebook")
def fit_codebook_task(workspace: str, stage: str, chunk: str, fingerprint: str, config: CodebookConfig,
                      upstream: Upstream | None = None) -> ChunkRecord:
    """PCA + diagonal GMM on the stored IDT sample; the codebook's arrays go to ``fit_codebook.zarr``. ``upstream``:
    the sample's records its key was planned from (``storage.upstream``)."""
    ws = Workspace(workspace)
    done = ws.read_record(stage, chunk)
    if done is not None and done.fingerprint == fingerprint:
        ws.remove_orphans(stage, chunk, keep=done.version)  # what a commit killed part-way left
        return done
    sample = read_sample(ws, (upstream or {}).get("idt"), stage)
    if len(sample) < config.gmm_components:
        raise ValueError(f"codebook: {len(sample)} sample descriptors, need at least gmm_components="
                         f"{config.gmm_components}; run the idt stage on more videos")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SmallSampleWarning)
        book, fit = fit_codebook_with_report(sample[:, 10:], codebook_params(config))
    small = [str(w.message) for w in caught if issubclass(w.category, SmallSampleWarning)]
    for w in caught:  # the others as they were
        if not issubclass(w.category, SmallSampleWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    version, group = ws.new_version(stage, chunk)
    for name, arr in book.to_arrays().items():
        group.create_array(name, data=np.asarray(arr), overwrite=True, **array_options())
    info = {"status": "ok", "rows": int(len(sample)), "fv_dim": int(book.fv_dim), "fingerprint": book.fingerprint(),
            "fit": [block.to_json() for block in fit]}  # PCA variance kept, EM log-likelihood per iteration
    if small:  # kept in the record: the stage's summary and a rerun that skips the fit still say it
        info["warning"] = small[0]
    record = ChunkRecord(stage, chunk, fingerprint, version, {"codebook": info})
    check_upstream(ws, upstream, stage)  # unchanged while it fitted
    ws.commit(stamp(record, "fit_codebook"))
    return record


def encode_one(video_id: str, workspace: str, stage: str, chunk: str, version: str, path: str, idt: IDTConfig,
               enc: EncodeConfig, codebook: Codebook, boxes_key: str | None = None) -> dict:
    """One video's IDT rows (extracted, or read from its text file) encoded: ``encode_rows``. A video whose detection
    failed runs without boxes, and its record says so (``no_boxes``)."""
    boxes, why = (None, "") if enc.idt_text_folder else chunk_boxes(workspace, chunk, boxes_key, video_id,
                                                                    f"{stage} {chunk}")
    out = encode_rows(video_rows(video_id, path, idt, enc.idt_text_folder, boxes), codebook, enc.keep_descriptors)
    return {**out, "no_boxes": why} if why else out


def encode_rows(rows: np.ndarray, codebook: Codebook, keep_descriptors: bool, xp=np) -> dict:
    """A video's (n, 436) IDT rows -> the record's facts and its payload: ``_sketch`` (S,) float32, the count sketch of
    its Fisher vector (computed on ``xp``'s device: CuPy after the torch backend on CUDA), and ``_rows`` where the
    descriptors are kept."""
    x = rows[:, 10:] if xp is np else to_device(np.ascontiguousarray(rows[:, 10:]), xp)
    fv, valid = fisher_vector(x, codebook)
    sketch = to_numpy(count_sketch(fv, codebook)).astype(np.float32)
    out = {"trajectories": int(len(rows)), "valid": bool(valid), "_sketch": sketch}
    if keep_descriptors:
        out["_rows"] = rows
    if not valid:
        out["note"] = "no trajectory: zero vector, marked invalid"
    return out


def _write_sketches(group, results: dict[str, dict]) -> None:
    ids = sorted(v for v, r in results.items() if r.get("status") == "ok")
    dim = next((r["_sketch"].shape[0] for r in results.values() if "_sketch" in r), 0)
    data = np.stack([results[v]["_sketch"] for v in ids]) if ids else np.zeros((0, dim), np.float32)
    arr = group.create_array("sketches", data=data, overwrite=True, **array_options())
    arr.attrs["video_ids"] = ids
    group.create_array("valid", data=np.array([results[v]["valid"] for v in ids], bool), overwrite=True,
                       **array_options())
    for v in ids:
        if "_rows" in results[v]:
            group.create_array(f"descriptors_{v}", data=results[v]["_rows"], overwrite=True, **array_options())


def encode_batch(video_ids: list[str], workspace: str, stage: str, chunk: str, version: str,
                 args: list[tuple]) -> dict[str, dict | Exception]:
    """``encode_one`` for a batch of videos with the torch backend (``args``: each video's path, IDT and encode
    configs, codebook, boxes key): the batch's IDT in one call of the batched extractor, then each video's Fisher
    vector and sketch, on the GPU through CuPy where the extractor ran on CUDA and CuPy is installed."""
    idt, enc, book, boxes_key = args[0][1:]
    found = {v: chunk_boxes(workspace, chunk, boxes_key, v, f"{stage} {chunk}") for v in video_ids}
    boxes = {v: b for v, (b, _) in found.items()}
    xp = _device_arrays(idt)
    out: dict[str, dict | Exception] = {}
    for vid, rows in batch_idt({v: a[0] for v, a in zip(video_ids, args)}, idt, boxes).items():
        if isinstance(rows, Exception):
            out[vid] = rows
            continue
        try:
            out[vid] = encode_rows(rows, book, enc.keep_descriptors, xp)
        except Exception as e:  # noqa: BLE001 - the video's failure
            out[vid] = e
            continue
        if found[vid][1]:
            out[vid]["no_boxes"] = found[vid][1]
    return out


def _device_arrays(idt: IDTConfig):
    """The array module of the Fisher encoding after the torch backend: CuPy where the extractor runs on CUDA and
    CuPy sees a device, else NumPy."""
    from idtprior.encoding.backend import cupy_available
    from idtprior.video.idt.torch_extract import resolve_device

    if resolve_device(idt.device).type == "cuda" and cupy_available():
        import cupy

        return cupy
    return np


# The behaviour version of this module's stage(s), in their cache keys: bump it when results change (README: "Cache keys
# and upgrades"); tests/tasks/test_behaviour_pins.py says when.
BEHAVIOUR = {"fit_codebook": 1, "encode": 1, "encode@torch": 1, "cluster": 1}


@task(name="encode-chunk", task_run_name="encode {chunk}")
def encode_chunk(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, str], idt: IDTConfig,
                 config: EncodeConfig, dask_address: str | None = None,
                 boxes_key: str | None = None, upstream: Upstream | None = None) -> ChunkRecord:
    """IDT -> Fisher vector -> sketch for each video of a chunk; writes the chunk's (n, sketch_dim) rows + mask.
    ``boxes_key``: the key of the chunk's detect record to read person boxes from (None: no boxes); ``upstream``:
    the records the key was planned from, the codebook's among them (``storage.upstream``)."""
    book = _planned_codebook(workspace, stage, chunk, fingerprint, upstream)
    return run_chunk(workspace, stage, chunk, fingerprint,
                     {v: (p, idt, config, book, boxes_key) for v, p in videos.items()}, encode_one, dask_address,
                     finish=_write_sketches, upstream=upstream)


def _planned_codebook(workspace: str, stage: str, chunk: str, fingerprint: str, upstream: Upstream | None):
    """The codebook an encode chunk's key was planned from; None when the chunk is done (``run_chunk`` skips it)."""
    ws = Workspace(workspace)
    done = ws.read_record(stage, chunk)
    if done is not None and done.fingerprint == fingerprint:
        return None
    return read_codebook(ws, (upstream or {}).get("fit_codebook", {}).get(ALL), f"{stage} {chunk}")


@task(name="encode-chunk-torch", task_run_name="encode {chunk}")
def encode_chunk_torch(workspace: str, stage: str, chunk: str, fingerprint: str, videos: dict[str, str],
                       idt: IDTConfig, config: EncodeConfig, dask_address: str | None = None,
                       boxes_key: str | None = None, upstream: Upstream | None = None) -> ChunkRecord:
    """``encode_chunk`` with the torch backend: the chunk's videos ``idt.batch_videos`` at a time, each batch one call
    of the batched extractor (on a Dask worker when ``dask_address`` is set). Rows imported from text files
    (``encode.idt_text_folder``) go through ``encode_chunk`` whatever the backend."""
    book = _planned_codebook(workspace, stage, chunk, fingerprint, upstream)
    return run_chunk(workspace, stage, chunk, fingerprint,
                     {v: (p, idt, config, book, boxes_key) for v, p in videos.items()}, encode_batch, dask_address,
                     finish=_write_sketches, batch_size=idt.batch_videos, variant="encode@torch", upstream=upstream)


def read_sketches(ws: Workspace, video_ids: list[str], expected: dict[str, str] | None = None,
                  reader: str = "cluster") -> tuple[np.ndarray, np.ndarray]:
    """(N, sketch_dim) float32 rows aligned with ``video_ids`` and the (N,) valid mask (False where not encoded);
    ``expected``: the encode records (chunk -> key) the reader's key was planned from (checked when given)."""
    index = {v: i for i, v in enumerate(video_ids)}
    x, valid = None, np.zeros(len(video_ids), bool)
    for chunk, rec in checked_records(ws, "encode", expected, reader).items():
        group = ws.open_verified("encode", rec)
        with reading("encode", chunk):
            arr = group["sketches"]
            ids, data, ok = arr.attrs["video_ids"], arr[...], group["valid"][...]
        if x is None:
            x = np.zeros((len(video_ids), data.shape[1]), np.float32)
        for j, vid in enumerate(ids):
            if vid in index:
                x[index[vid]], valid[index[vid]] = data[j], ok[j]
    if x is None:
        raise KeyError(f"workspace {ws.url} has no sketches: run the encode stage first")
    return x, valid


SKETCHES = "sketches"  # the whole-dataset (N, S) array assembled from the encode chunks


def assemble_sketches(ws: Workspace, video_ids: list[str], fingerprint: str, rows_per_chunk: int = 1024,
                      expected: dict[str, str] | None = None) -> ChunkRecord:
    """Write ``sketches.zarr/all/<version>/``: ``sketches`` (N, S) float32 rows aligned with ``video_ids`` (the
    manifest's ok videos), ``valid`` (N,) and the ids as an attribute; committed by its record like a chunk, skipped
    when the record matches ``fingerprint``. The encode chunks are read once (as the cluster stage reads them);
    ``expected``: the encode records (chunk -> key) ``fingerprint`` was computed from (checked when given)."""
    done = ws.read_record(SKETCHES, ALL)
    if done is not None and done.fingerprint == fingerprint:
        ws.remove_orphans(SKETCHES, ALL, keep=done.version)  # what a commit killed part-way left
        return done
    if not video_ids:
        raise KeyError(f"workspace {ws.url}: no video to assemble sketches for")
    x, valid = read_sketches(ws, video_ids, expected, SKETCHES)
    version, group = ws.new_version(SKETCHES, ALL)
    arr = group.create_array("sketches", data=x, chunks=(min(rows_per_chunk, len(video_ids)), x.shape[1]),
                             overwrite=True, **array_options())
    group.create_array("valid", data=valid, overwrite=True, **array_options())
    arr.attrs["video_ids"] = list(video_ids)
    record = ChunkRecord(SKETCHES, ALL, fingerprint, version, {"sketches": {
        "status": "ok", "videos": len(video_ids), "valid": int(valid.sum()), "dim": int(x.shape[1])}})
    ws.commit(stamp(record, "encode"))
    return record


def read_assembled_sketches(ws: Workspace) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The assembled ``(N, S)`` sketches, the ``(N,)`` valid mask and the video ids (manifest order)."""
    rec = ws.read_record(SKETCHES, ALL)
    if rec is None:
        raise KeyError(f"workspace {ws.url} has no assembled sketches: run the encode stage first")
    group = ws.open_verified(SKETCHES, rec)
    with reading(SKETCHES, ALL):
        arr = group["sketches"]
        return np.asarray(arr[...]), np.asarray(group["valid"][...]), list(arr.attrs["video_ids"])


@task(name="cluster", task_run_name="cluster k={config.k}")
def cluster_task(workspace: str, stage: str, chunk: str, fingerprint: str, video_ids: list[str],
                 config: ClusterConfig, upstream: Upstream | None = None) -> ChunkRecord:
    """K-means (m runs) on the valid sketches; labels (m, N) aligned with ``video_ids`` (-1: not encoded).
    ``upstream``: the encode records its key was planned from (``storage.upstream``)."""
    ws = Workspace(workspace)
    done = ws.read_record(stage, chunk)
    if done is not None and done.fingerprint == fingerprint:
        ws.remove_orphans(stage, chunk, keep=done.version)  # what a commit killed part-way left
        return done
    x, valid = read_sketches(ws, video_ids, (upstream or {}).get("encode"), stage)
    n_valid = int(valid.sum())
    if n_valid < config.k:
        raise ValueError(f"cluster: k={config.k} but only {n_valid} videos have a valid sketch")
    labels_valid, centroids = kmeans(x[valid], config.k, runs=config.runs, seed=config.seed, iters=config.iters,
                                     n_init=config.n_init, backend=config.backend)
    labels = np.full((config.runs, len(video_ids)), -1, np.int64)
    labels[:, valid] = labels_valid
    version, group = ws.new_version(stage, chunk)
    group.create_array("labels", data=labels, overwrite=True, **array_options()).attrs["video_ids"] = list(video_ids)
    group.create_array("centroids", data=np.asarray(centroids, np.float32), overwrite=True, **array_options())
    sizes = [np.bincount(run, minlength=config.k) for run in labels_valid]
    stats = {"status": "ok", "videos": n_valid, "k": config.k,
             "empty_clusters": [int((s == 0).sum()) for s in sizes], "largest_cluster": [int(s.max()) for s in sizes],
             "median_cluster": [float(np.median(s)) for s in sizes]}
    record = ChunkRecord(stage, chunk, fingerprint, version, {"clusters": stats})
    check_upstream(ws, upstream, stage)  # unchanged while it clustered
    ws.commit(stamp(record, "cluster"))
    return record


def read_cluster_labels(ws: Workspace, key: str | None = None, reader: str = "") -> tuple[np.ndarray, list[str]]:
    """(m, N) int labels (-1: no valid sketch) and the video ids they align with; ``key``: the key of the cluster
    record the reader's key was planned from (checked when given)."""
    rec = checked_record(ws, "cluster", ALL, key, reader)
    if rec is None:
        raise KeyError(f"workspace {ws.url} has no clusters: run the cluster stage first")
    with reading("cluster", ALL):
        arr = ws.open_verified("cluster", rec)["labels"]
        return np.asarray(arr[...]), list(arr.attrs["video_ids"])
