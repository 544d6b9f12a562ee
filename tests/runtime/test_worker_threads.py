"""A Dask worker that runs videos is set up for them: one native thread per video (OpenCV, BLAS and torch would
otherwise each start a thread per core in every worker: 16 workers x 16 threads on a 16-core host), and frame-sized
arrays reused from the heap (Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which makes every such array a fresh mmap)."""

import resource

import numpy as np

from idtprior.runtime.worker import run_chunk
from idtprior.storage import Workspace


def _facts(video_id: str, workspace: str, stage: str, chunk: str, version: str) -> dict:
    import cv2
    from threadpoolctl import threadpool_info

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(20):  # 3 MiB a frame buffer (under numpy's 4 MiB huge-page size), filled and freed: 768 pages
        np.full(3 << 18, i, np.float32).sum()  # each time when each one is a new mmap
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return {"cv2": cv2.getNumThreads(), "blas": sorted({p["num_threads"] for p in threadpool_info()}),
            "faults": faults}


def test_videos_on_a_dask_worker_use_one_native_thread_and_reuse_heap_memory(tmp_path):
    from distributed import LocalCluster

    ws = Workspace(str(tmp_path / "ws"))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster:
        rec = run_chunk(ws.url, "decode", "0000-of-0001", "fp", {"a": (), "b": ()}, _facts,
                        dask_address=cluster.scheduler_address, needs_version=False, progress=False)
    assert rec.n_ok == 2
    for facts in rec.videos.values():
        assert facts["cv2"] == 1 and facts["blas"] == [1], facts
        assert facts["faults"] < 4 * 768, facts  # about one buffer's pages, not twenty buffers'


def _thread_env() -> dict:
    import os

    return {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "MALLOC_TRIM_THRESHOLD_")}


def _worker_log_passes() -> dict:
    """Which records the worker's ``distributed.worker`` logger lets through (its filters, as ``Logger.handle``)."""
    import logging

    log = logging.getLogger("distributed.worker")

    def passes(msg: str, level: int) -> bool:
        return bool(log.filter(log.makeRecord(log.name, level, __file__, 0, msg, (), None)))

    return {"heartbeat": passes("Failed to communicate with scheduler during heartbeat.", logging.ERROR),
            "other error": passes("Compute Failed", logging.ERROR)}


def test_the_pipelines_cluster_leaves_this_process_environment_alone(monkeypatch):
    # Dask's nanny used to write OMP_NUM_THREADS=1 (and the rest) into the flow process's environment: torch imported
    # after the cluster started then trained with one thread whatever the core count
    from distributed import Client

    from idtprior.config.compute import DaskConfig
    from idtprior.runtime.dask import dask_cluster

    for k in _thread_env():
        monkeypatch.delenv(k, raising=False)
    with dask_cluster(DaskConfig(n_workers=1)) as address:
        assert _thread_env() == dict.fromkeys(_thread_env())  # still unset here
        with Client(address) as client:
            (worker_env,) = client.run(_thread_env).values()
            # its workers drop the heartbeat failure a closing cluster can log on the terminal, and nothing else
            (passes,) = client.run(_worker_log_passes).values()
    assert passes == {"heartbeat": False, "other error": True}
    assert worker_env["OMP_NUM_THREADS"] == worker_env["MKL_NUM_THREADS"] == worker_env["OPENBLAS_NUM_THREADS"] == "1"
    assert _thread_env() == dict.fromkeys(_thread_env())
