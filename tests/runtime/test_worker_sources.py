"""Workers prove their code (``idtprior.sources``): a Dask worker of a real LocalCluster that imported idtprior (a core
module, ``video.io``) before the package changed on disk refuses the flow's work, naming both sources hashes and
saying to restart the workers, even once its files are the flow's again; restarted, it runs the stage. A stage run
refuses to start in a process whose own snapshot no longer matches the files."""

import shutil
from pathlib import Path

import pytest
from distributed import Client, LocalCluster
from idtprior_testutils import write_moving_square_videos

import idtprior
from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.sources import StaleCode, check_process, source_hash
from idtprior.storage import FrameStore, Workspace

pytestmark = pytest.mark.usefixtures("prefect_engine")
PACKAGE = Path(idtprior.__file__).resolve().parent


def test_a_worker_that_imported_older_sources_refuses_the_flows_work_until_restarted(tmp_path):
    # a copy of the package as it was before a pull: one comment more in a core module
    copy = tmp_path / "before-the-pull"
    shutil.copytree(PACKAGE, copy / "idtprior", ignore=shutil.ignore_patterns("__pycache__"))
    io_file = copy / "idtprior" / "video" / "io.py"
    pulled = io_file.read_text()
    io_file.write_text(pulled + "# a line the pull removes\n")
    old = source_hash(str(copy / "idtprior"))
    assert old != idtprior.SOURCES

    src = tmp_path / "videos"
    write_moving_square_videos(src, 4, frames=8)
    cfg = PipelineConfig.model_validate({"workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode"],
                                         "dask": {"n_workers": 0}, "ingest": {"source": str(src), "num_chunks": 2},
                                         "decode": {"short_side": 16}})
    pretrain_pipeline(cfg, stages=["ingest"], progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        # the long-lived worker imports idtprior and a core module from the old files
        client.run(exec, f"import sys; sys.path.insert(0, {str(copy)!r}); import idtprior.video.io")
        (where,) = client.run(eval, "__import__('idtprior').__file__").values()
        assert where == str(copy / "idtprior" / "__init__.py")
        io_file.write_text(pulled)  # the pull: the worker's files are the flow's now, its imports are not
        assert source_hash(str(copy / "idtprior")) == idtprior.SOURCES

        with pytest.raises(RuntimeError) as info:
            pretrain_pipeline(cfg, stages=["decode"], dask_address=cluster.scheduler_address, progress=False)
        cause = info.value.__cause__
        assert isinstance(cause, StaleCode), repr(cause)
        message = str(cause)
        assert f"runs idtprior sources {old}" in message and f"the flow runs {idtprior.SOURCES}" in message
        assert "restart the workers" in message and "Dask worker tcp://127.0.0.1:" in message
        assert Workspace(cfg.workspace).records("decode") == {}  # refused before any video ran

        client.restart()  # fresh worker processes import the package as it is
        pretrain_pipeline(cfg, stages=["decode"], dask_address=cluster.scheduler_address, progress=False)
    assert len(FrameStore(Workspace(cfg.workspace)).video_ids) == 4


def test_a_stage_refuses_to_start_in_a_process_whose_sources_changed_on_disk(monkeypatch):
    check_process("stage decode")  # as imported
    monkeypatch.setattr(idtprior.sources, "SOURCES", "0123456789abcdef")  # as if the files changed since the import
    with pytest.raises(StaleCode, match=r"stage decode: this process \(pid \d+\) imported idtprior sources "
                                        r"0123456789abcdef at .*restart this process"):
        check_process("stage decode")
