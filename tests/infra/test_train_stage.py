"""Training beyond one machine: the ``idtprior train-stage`` entry point (DDP with processes started outside the
stage's own process) and a training stage run as a SLURM batch job.

No SLURM here: the job script's content is checked as text and through idtprior's own command line; the whole path
(flow -> sbatch -> srun -> one ``idtprior train-stage`` per task -> the record) runs against stand-ins of sbatch,
squeue, sacct and srun that start the job's processes on this machine (``fake_slurm.py``), so the two ranks meet
through Lightning's SLURM environment exactly as on a cluster, over gloo on the CPU."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_slurm import install_fake_slurm

import idtprior
from idtprior.cli import build_parser
from idtprior.config import PipelineConfig
from idtprior.flows.pipeline import pretrain_pipeline
from idtprior.stages.pretrain.job import train_job_script
from idtprior.stages.pretrain.task import read_embeddings
from idtprior.storage import Workspace, read_manifest
from idtprior.video.io import write_video
from idtprior_testutils import moving_square_frames

TINY = {"width": 0.125, "embed_dim": 16, "clip_length": 4, "crop_size": 32, "batch_size": 2, "negatives": 8,
        "num_workers": 0, "accelerator": "cpu", "ir_exact": True}
IDTPRIOR = str(Path(sys.executable).with_name("idtprior"))


def _sbatch(script: str) -> list[str]:
    return [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_the_training_job_script_asks_for_nodes_x_gpus_and_runs_one_entry_point_per_gpu(tmp_path):
    cfg = PipelineConfig.model_validate({"workspace": str(tmp_path / "ws"), "pretrain": {
        "devices": 4, "num_nodes": 2, "accelerator": "gpu", "slurm": {
            "partition": "gpu", "account": "videolab", "cpus_per_task": 10, "mem": "256G", "time": "2-00:00:00",
            "job_extra_directives": ["--exclusive"], "job_script_prologue": ["module load cuda/12.8"]}}})
    script = train_job_script(cfg, "pretrain_la", tmp_path / "cfg.yaml", "f" * 64, tmp_path / "job",
                              workdir=tmp_path)
    assert script.startswith("#!/usr/bin/env bash\n")
    assert _sbatch(script) == [
        "--job-name=idtprior-pretrain_la", "--nodes=2", "--ntasks-per-node=4", "--cpus-per-task=10", "--mem=256G",
        "--time=2-00:00:00", "--gres=gpu:4", "--partition=gpu", "--account=videolab", f"--chdir={tmp_path}",
        f"--output={tmp_path / 'job' / 'slurm-%j.out'}", "--exclusive"]
    body = [line for line in script.splitlines() if line and not line.startswith("#")]
    assert body[:2] == ["set -euo pipefail", "module load cuda/12.8"]
    prepare, launch = shlex.split(body[2]), shlex.split(body[3])
    expected = [IDTPRIOR, "train-stage", str(tmp_path / "ws"), "pretrain_la", "--config", str(tmp_path / "cfg.yaml"),
                "--fingerprint", "f" * 64, "--sources", idtprior.SOURCES]  # the job runs what the flow runs
    assert prepare == [*expected, "--prepare-only"]  # one process readies the run folder before the ranks start
    assert launch == ["srun", "--kill-on-bad-exit=1", *expected]
    args = build_parser().parse_args(launch[3:])  # idtprior's own command line takes it
    assert (args.command, args.workspace, args.stage, args.config, args.fingerprint, args.prepare_only,
            args.sources) == ("train-stage", str(tmp_path / "ws"), "pretrain_la", str(tmp_path / "cfg.yaml"),
                              "f" * 64, False, idtprior.SOURCES)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

    cpu = cfg.with_updates(pretrain={"accelerator": "cpu", "slurm": {"gres": None}})
    assert not any(d.startswith("--gres") for d in _sbatch(train_job_script(cpu, "pretrain_la", "c.yaml", "0" * 64,
                                                                            tmp_path)))
    typed = cfg.with_updates(pretrain={"slurm": {"gres": "gpu:a100:4"}})
    assert "--gres=gpu:a100:4" in _sbatch(train_job_script(typed, "pretrain_la", "c.yaml", "0" * 64, tmp_path))


def test_a_retried_job_task_waits_for_its_earlier_job_and_a_job_without_a_record_fails_with_its_log(tmp_path,
                                                                                                      monkeypatch):
    from idtprior.stages.pretrain.job import submit, train_stage_job_task

    state = tmp_path / "slurm-state"
    monkeypatch.setenv("PATH", f"{install_fake_slurm(tmp_path / 'bin', state)}{os.pathsep}{os.environ['PATH']}")
    cfg = PipelineConfig.model_validate({"workspace": str(tmp_path / "ws"), "pretrain": {
        "launcher": "slurm", "slurm": {"poll_seconds": 0.2}}})
    ws = Workspace(cfg.workspace)
    key = "a" * 64
    job_dir = Path(ws.path("jobs", "pretrain_ir", key[:16]))
    job_dir.mkdir(parents=True)
    # the job an earlier try of the task submitted for this plan: still running, then it fails without a record
    earlier = tmp_path / "earlier.sbatch"
    earlier.write_text(f"#!/usr/bin/env bash\n#SBATCH --job-name=idtprior-pretrain_ir\n"
                       f"#SBATCH --output={job_dir}/slurm-%j.out\necho 'rank 0: CUDA out of memory'\nsleep 2\n"
                       f"exit 1\n")
    job = submit(earlier)
    (job_dir / "job_id").write_text(job)
    with pytest.raises(RuntimeError) as e:
        train_stage_job_task.fn(workspace=ws.url, stage="pretrain_ir", chunk="all", fingerprint=key, config=cfg)
    assert f"SLURM job {job} ended FAILED without committing the stage's record" in str(e.value)
    assert "CUDA out of memory" in str(e.value)  # the log's tail
    calls = [json.loads(line) for line in (state / "calls.log").read_text().splitlines()]
    assert [c["cmd"] for c in calls].count("sbatch") == 1  # the earlier one only: nothing submitted beside it

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="sbatch not found on PATH"):
        submit(earlier)


def _workspace(tmp_path: Path, **pretrain) -> PipelineConfig:
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(6):
        write_video(src / f"clip{i}.mp4", moving_square_frames(10, seed=i), fps=25, options={"preset": "ultrafast"})
    cfg = PipelineConfig.model_validate({
        "workspace": str(tmp_path / "ws"), "stages": ["ingest", "decode", "pretrain_ir"],
        "ingest": {"source": str(src), "num_chunks": 2}, "decode": {"short_side": 32}, "dask": {"n_workers": 0},
        "pretrain": {**TINY, **pretrain}, "pretrain_ir": {"epochs": 2}})
    pretrain_pipeline(cfg, stages=["ingest", "decode"], progress=False)
    return cfg


@pytest.mark.usefixtures("prefect_engine")
def test_the_entry_point_commits_the_record_the_flow_expects_and_refuses_a_stale_plan(tmp_path, capsys):
    from idtprior.cli import main
    from idtprior.stages.pretrain.flow import plan_train_stage

    cfg = _workspace(tmp_path)
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    ws = Workspace(cfg.workspace)
    plan = plan_train_stage("pretrain_ir", cfg)
    argv = ["train-stage", cfg.workspace, "pretrain_ir", "--config", str(cfg_file)]

    # written by a flow that ran other idtprior sources (a pull in between): trains nothing
    assert main([*argv, "--fingerprint", plan["fingerprint"], "--sources", "0123456789abcdef"]) == 2
    assert f"runs idtprior sources {idtprior.SOURCES}" in capsys.readouterr().err
    assert main([*argv, "--fingerprint", "0" * 64]) == 2  # submitted for another plan: trains nothing
    assert f"plans the record key {plan['fingerprint'][:12]}, not 000000000000 as submitted" in capsys.readouterr().err
    assert ws.read_record("pretrain_ir", "all") is None and not Path(ws.path("runs", "pretrain_ir")).exists()

    assert main([*argv, "--fingerprint", plan["fingerprint"], "--prepare-only"]) == 0  # the run folder, no training
    run_dir = Path(ws.path("runs", "pretrain_ir")) / plan["train_fingerprint"][:16]
    assert json.loads((run_dir / "run.json").read_text())["train_fingerprint"] == plan["train_fingerprint"]
    assert not (run_dir / "checkpoints").exists() and ws.read_record("pretrain_ir", "all") is None

    assert main([*argv, "--fingerprint", plan["fingerprint"]]) == 0
    rec = ws.read_record("pretrain_ir", "all")
    assert rec.fingerprint == plan["fingerprint"] and rec.videos["model"]["epochs"] == 2
    assert f"pretrain_ir: committed {rec.fingerprint[:12]}" in capsys.readouterr().out
    emb, ids = read_embeddings(ws, "pretrain_ir")
    assert emb.shape == (6, 16) and ids == sorted(r.video_id for r in read_manifest(ws))

    # the flow finds the stage done (the same record, as its own task would have committed it) ...
    result = pretrain_pipeline(cfg, stages=["pretrain_ir"], progress=False)
    assert result["pretrain_ir"]["epochs"] == 2 and ws.read_record("pretrain_ir", "all").created == rec.created
    # ... and, without --config, the entry point reads the config the workspace remembers (the flow wrote it)
    assert main(["train-stage", cfg.workspace, "pretrain_ir"]) == 0
    assert f"pretrain_ir: committed {rec.fingerprint[:12]}" in capsys.readouterr().out
    assert ws.read_record("pretrain_ir", "all").created == rec.created


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_engine")
def test_a_two_node_stage_runs_as_a_batch_job_of_two_ranks_and_the_flow_returns_its_record(tmp_path, monkeypatch):
    """num_nodes 2 x devices 1 on the CPU: the flow submits the job and waits; srun starts two ranks, which train
    together over gloo (each only half the batches); rank 0 commits; a second run is cached."""
    cfg = _workspace(tmp_path, num_nodes=2, devices=1, slurm={"poll_seconds": 0.5})
    state = tmp_path / "slurm-state"
    bin_dir = install_fake_slurm(tmp_path / "slurm-bin", state)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "1024")  # as inside another job: must not reach the training job

    result = pretrain_pipeline(cfg, stages=["pretrain_ir"], progress=False)
    ws = Workspace(cfg.workspace)
    rec = ws.read_record("pretrain_ir", "all")
    info = rec.videos["model"]
    assert result["pretrain_ir"]["epochs"] == info["epochs"] == 2
    emb, ids = read_embeddings(ws, "pretrain_ir")
    assert ids == sorted(r.video_id for r in read_manifest(ws)) and emb.shape == (6, 16)

    calls = [json.loads(line) for line in (state / "calls.log").read_text().splitlines()]
    assert [c["cmd"] for c in calls if c["cmd"] in ("sbatch", "srun")] == ["sbatch", "srun"]
    assert next(c for c in calls if c["cmd"] == "sbatch")["slurm_env"] == []  # not the outer job's settings
    job_dir = Path(ws.path("jobs", "pretrain_ir", rec.fingerprint[:16]))
    script = (job_dir / "train.sbatch").read_text()
    assert "--nodes=2" in _sbatch(script) and "--ntasks-per-node=1" in _sbatch(script)
    log = next(job_dir.glob("slurm-*.out")).read_text()
    # the two ranks met through SLURM's variables (Lightning's SLURM environment), not Lightning's own launcher
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log[-3000:]
    # each rank saw half the training batches: 6 videos, batch 2 per rank -> 3 steps per epoch on 1 rank, 1 on 2
    metrics = next(Path(info["run_dir"]).glob("csv/version_*/metrics.csv")).read_text().splitlines()
    steps = {int(row.split(",")[metrics[0].split(",").index("step")]) for row in metrics[1:]}
    assert max(steps) < 3, steps

    created = rec.created
    again = pretrain_pipeline(cfg, stages=["pretrain_ir"], progress=False)
    assert again["pretrain_ir"]["epochs"] == 2
    assert ws.read_record("pretrain_ir", "all").created == created
    calls = [json.loads(line) for line in (state / "calls.log").read_text().splitlines()]
    assert [c["cmd"] for c in calls].count("sbatch") == 1  # nothing submitted for a committed stage


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_engine")
def test_the_entry_point_trains_with_two_gloo_processes_and_commits_the_record_the_flow_expects(tmp_path):
    """``idtprior train-stage`` on one machine with devices 2: Lightning starts the second process itself (the
    command run again), both train, the first commits; the flow then finds the stage up to date."""
    cfg = _workspace(tmp_path, devices=2)
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run([IDTPRIOR, "train-stage", cfg.workspace, "pretrain_ir", "--config", str(cfg_file)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out.stderr + out.stdout
    ws = Workspace(cfg.workspace)
    rec = ws.read_record("pretrain_ir", "all")
    assert rec is not None and rec.videos["model"]["epochs"] == 2
    assert f"pretrain_ir: committed {rec.fingerprint[:12]}" in out.stdout
    result = pretrain_pipeline(cfg, stages=["pretrain_ir"], progress=False)  # the same key: nothing retrained
    assert ws.read_record("pretrain_ir", "all").created == rec.created and result["pretrain_ir"]["epochs"] == 2
