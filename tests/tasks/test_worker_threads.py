"""Per-video work on a Dask worker runs with one native thread: OpenCV, BLAS and torch would otherwise each start a
thread per core of the machine in every worker (oversubscription: 16 workers x 16 threads on a 16-core host)."""

from idtprior.storage import Workspace
from idtprior.tasks.common import run_chunk


def _threads(video_id: str, workspace: str, stage: str, chunk: str, version: str) -> dict:
    import cv2
    from threadpoolctl import threadpool_info

    return {"cv2": cv2.getNumThreads(), "blas": sorted({p["num_threads"] for p in threadpool_info()})}


def test_videos_on_a_dask_worker_use_one_opencv_and_one_blas_thread(tmp_path):
    from distributed import LocalCluster

    import numpy  # noqa: F401 - its BLAS is one of the pools threadpoolctl sees

    ws = Workspace(str(tmp_path / "ws"))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster:
        rec = run_chunk(ws.url, "decode", "0000-of-0001", "fp", {"a": (), "b": ()}, _threads,
                        dask_address=cluster.scheduler_address, needs_version=False, progress=False)
    assert rec.n_ok == 2
    for facts in rec.videos.values():
        assert facts["cv2"] == 1 and facts["blas"] == [1], facts
