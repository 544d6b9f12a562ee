"""The cluster stage: K-means (m seeded runs, k clusters) on the assembled sketches, one chunk (``all``); its summary
with cluster-size statistics, and NMI / purity / close-pair precision where the manifest has labels.

Its plan, its task (``cluster_task``), its flow, the reader of its labels (``read_cluster_labels``: the training
stages' LA clusters) and its pictures (the montage of a few clusters' member videos)."""

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from idtprior.config import PipelineConfig
from idtprior.config.stages import ClusterConfig
from idtprior.encoding import kmeans
from idtprior.keyscheme import upstream_key
from idtprior.runtime.artifacts import artifact_key
from idtprior.runtime.codeprint import code_key
from idtprior.runtime.dask import run_chunks
from idtprior.runtime.keys import chunk_fingerprint, stamp
from idtprior.runtime.records import provenance_lines
from idtprior.runtime.runs import missing_stage, stage_flow
from idtprior.runtime.upgrade import with_legacy_keys
from idtprior.stages.common import ALL, ok_rows, stage_pictures
from idtprior.stages.encode import read_sketches
from idtprior.stages.idt import drawing_params
from idtprior.storage import ChunkRecord, Workspace, hash_json, read_manifest
from idtprior.storage.integrity import array_options, reading
from idtprior.storage.upstream import Upstream, check_upstream, checked_record, planned

# The behaviour version of this module's stage(s), in their cache keys: bump it when results change (README: "Cache keys
# and upgrades"); tests/runtime/test_behaviour_pins.py says when.
BEHAVIOUR = {"cluster": 1}


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


def plan_cluster(config: PipelineConfig, ws: Workspace) -> dict[str, dict]:
    """Clustering's one chunk (``all``) -> the task's arguments, with its "fingerprint". Runs nothing."""
    ids = [r.video_id for r in ok_rows(ws)]
    records = ws.records("encode")
    inputs = {c: upstream_key(r) for c, r in records.items()}
    if not inputs:
        raise missing_stage(ws, "no sketches", "encode")
    fp = chunk_fingerprint("cluster", ALL, {"encode": hash_json(inputs), "ids": hash_json(ids)},
                           config.cluster.config_hash(), code_key("cluster"))
    return with_legacy_keys(ws, "cluster", {ALL: {"fingerprint": fp, "video_ids": ids,
                                                               "config": config.cluster,
                                                               "upstream": {"encode": planned(records)}}},
                            lambda: plan_cluster(config, ws))


@stage_flow("cluster")
def cluster_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """K-means on the sketches; cluster-size statistics, and NMI / purity where the manifest has labels."""
    ws = Workspace(config.workspace)
    rows = ok_rows(ws)
    records = run_chunks(cluster_task, ws, "cluster", plan_cluster(config, ws), progress)
    stats = dict(records[ALL].videos["clusters"])
    labels, label_ids = read_cluster_labels(ws)
    truth = {r.video_id: r.label for r in rows if r.label}
    if truth:
        stats.update(cluster_agreement(labels, label_ids, truth))
    rows_md = "\n".join(f"| {k} | {v} |" for k, v in stats.items() if k != "status")
    pictures = stage_pictures("cluster", cluster_markdown, ws, config.idt, seed=config.cluster.seed, stats=stats)
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


def cluster_figure(ws: Workspace, video_ids: list[str], assignments: np.ndarray, idt_config=None, seed: int = 0,
                   n_clusters: int = 6, per_cluster: int = 4, labels: list[str] | None = None) -> np.ndarray:
    """The montage of the ``n_clusters`` largest clusters of ``assignments (N,)`` over ``video_ids``: ``per_cluster``
    members' middle frames each (seeded), with the IDT tracks of a window ending there when ``idt_config`` is given."""
    from idtprior.evaluation.figures import cluster_montage, largest_clusters
    from idtprior.stages.pictures import MIN_CELL_SIDE, VideoFrames, cell_for, montage_tracks

    source = VideoFrames(ws, video_ids)
    tracks = None
    if idt_config is not None:
        members = [int(i) for _, m in largest_clusters(assignments, n_clusters, per_cluster, seed) for i in m]
        tracks = montage_tracks(source, members, drawing_params(idt_config))
    first = int(np.flatnonzero(np.asarray(assignments) >= 0)[0])
    h, w = source.read_clip(first, 0, 1).shape[1:3]
    return cluster_montage(source, assignments, n_clusters, per_cluster, seed, cell_for(h, w, least=MIN_CELL_SIDE),
                           tracks=tracks, labels=labels)


def cluster_markdown(ws: Workspace, idt_config=None, seed: int = 0, stats: dict | None = None,
                     n_clusters: int = 6, per_cluster: int = 4) -> str:
    """Run 0 of the clustering: the size histogram, the NMI / purity table (``stats``, as the stage computes it) and
    the montage of the largest clusters with their IDT tracks (``idt_config``; None: frames only)."""
    from idtprior.stages.pictures import image_md, size_histogram, table_md

    labels, ids = read_cluster_labels(ws)
    run = labels[0]
    truth = {r.video_id: r.label for r in read_manifest(ws)}
    md = "### clusters (run 0)\n\n"
    agreement = {k: (stats or {})[k] for k in ("nmi", "purity", "close_pairs", "close_precision", "same_label_pairs")
                 if k in (stats or {})}
    if agreement:
        md += table_md(list(agreement), [list(agreement.values())]) + "\n"
    md += image_md("cluster sizes", size_histogram(run)) + "\n\n"
    image = cluster_figure(ws, ids, run, idt_config, seed, n_clusters, per_cluster,
                           labels=[truth.get(v) or "-" for v in ids] if any(truth.values()) else None)
    what = "with the IDT tracks ending at it" if idt_config is not None else ""
    md += (f"The {min(n_clusters, len(set(run[run >= 0].tolist())))} largest clusters, {per_cluster} member videos "
           f"each (seeded), middle frame {what}:\n\n{image_md('cluster montage', image)}\n")
    return md
