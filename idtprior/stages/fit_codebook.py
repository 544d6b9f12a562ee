"""The fit_codebook stage: PCA + diagonal GMM fitted on the IDT sample (``codebook``'s settings), one chunk (``all``).

Its plan (keyed on the idt sample's records), its task (``fit_codebook_task``), its flow, the reader later stages use
(``read_codebook``: the codebook, checked against the key the reader planned from) and its pictures."""

import time
import warnings

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from idtprior.config import PipelineConfig
from idtprior.config.stages import CodebookConfig
from idtprior.encoding import Codebook, CodebookParams
from idtprior.encoding.codebook import SmallSampleWarning, fit_codebook_with_report
from idtprior.keyscheme import upstream_key
from idtprior.runtime.artifacts import artifact_key
from idtprior.runtime.codeprint import code_key
from idtprior.runtime.dask import run_chunks
from idtprior.runtime.keys import chunk_fingerprint, stamp
from idtprior.runtime.records import provenance_lines
from idtprior.runtime.runs import missing_stage, stage_flow
from idtprior.runtime.upgrade import with_legacy_keys
from idtprior.runtime.worker import run_logger
from idtprior.stages.common import ALL, check_settings, stage_pictures
from idtprior.stages.idt import read_sample
from idtprior.storage import ChunkRecord, Workspace
from idtprior.storage.integrity import array_options, reading
from idtprior.storage.upstream import Upstream, check_upstream, checked_record, planned


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


# The behaviour version of this module's stage(s), in their cache keys: bump it when results change (README: "Cache keys
# and upgrades"); tests/runtime/test_behaviour_pins.py says when.
BEHAVIOUR = {"fit_codebook": 1}


class FitProgress:
    """The fit's progress in the stage's log: each block's start, then its EM iterations at most every ``every``
    seconds (a fit is never silent for longer; the demo's 5 blocks x up to 100 iterations are not 500 lines)."""

    def __init__(self, stage: str, every: float = 5.0):
        self.stage, self.every, self.last = stage, every, -float("inf")
        self.t0 = time.monotonic()

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        if "EM iteration" in line and now - self.last < self.every:
            return
        self.last = now
        run_logger().info(f"{self.stage}: {line} [{now - self.t0:.0f} s]")


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
        book, fit = fit_codebook_with_report(sample[:, 10:], codebook_params(config), FitProgress(stage))
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


def plan_fit_codebook(config: PipelineConfig, ws: Workspace) -> dict[str, dict]:
    """The codebook's one chunk (``all``) -> the task's arguments, with its "fingerprint". Runs nothing."""
    sample = ws.records("idt")
    inputs = {c: upstream_key(r) for c, r in sample.items()}
    if not inputs:
        raise missing_stage(ws, "no IDT sample", "idt")
    fp = chunk_fingerprint("fit_codebook", ALL, inputs, config.codebook.config_hash(),
                           code_key("fit_codebook"))
    plan = {"fingerprint": fp, "config": config.codebook, "upstream": {"idt": planned(sample)}}
    return with_legacy_keys(ws, "fit_codebook", {ALL: plan}, lambda: plan_fit_codebook(config, ws))


@stage_flow("fit_codebook")
def fit_codebook_flow(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
    """PCA + GMM on the IDT sample; the codebook (with its sketch seed) goes to the workspace."""
    check_settings("fit_codebook", codebook_params, config.codebook)
    ws = Workspace(config.workspace)
    records = run_chunks(fit_codebook_task, ws, "fit_codebook", plan_fit_codebook(config, ws), progress)
    info = records[ALL].videos["codebook"]
    if info.get("warning"):
        get_run_logger().warning(info["warning"])
    create_markdown_artifact(key=artifact_key(ws, "fit_codebook", "summary"), markdown=(
        f"## codebook\n\n{info['rows']} sample descriptors, GMM {config.codebook.gmm_components} components, "
        f"PCA {config.codebook.pca_mode}, Fisher vector dim {info['fv_dim']}, sketch {config.codebook.sketch_dim}"
        + (f"\n\n**Warning:** {info['warning']}" if info.get("warning") else "")
        + "".join(f"\n\n- {line}" for line in provenance_lines(ws, "fit_codebook", records))
        + "\n\n" + stage_pictures("fit_codebook", fit_codebook_markdown, ws)))
    return {"stage": "fit_codebook", "chunks": 1, "videos_ok": 0, "videos_failed": 0, **{
        k: info[k] for k in ("rows", "fv_dim")}}


def fit_codebook_markdown(ws: Workspace) -> str:
    """PCA variance kept per block and the EM log-likelihood per iteration, from the codebook's record."""
    from idtprior.evaluation.figures import line_plot
    from idtprior.stages.pictures import image_md, table_md

    rec = ws.read_record("fit_codebook", "all")
    fit = (rec.videos.get("codebook", {}).get("fit") if rec else None) or []
    if not fit:
        return "_The codebook's record has no fit report (fitted by an earlier version)._\n"
    table = table_md(["block", "columns", "PCA dims", "variance kept", "EM iterations", "converged",
                      "final log-likelihood"],
                     [[i, f"{b['columns'][0]}:{b['columns'][1]}", b["pca_dim"], f"{b['pca_variance_kept']:.4f}",
                       len(b["log_likelihood"]), b["converged"],
                       f"{b['log_likelihood'][-1]:.4f}" if b["log_likelihood"] else "-"] for i, b in enumerate(fit)])
    series = {f"block {i}": b["log_likelihood"] for i, b in enumerate(fit) if b["log_likelihood"]}
    md = f"### codebook fit\n\n{table}"
    if series:
        xs = list(range(1, max(len(v) for v in series.values()) + 1))
        md += f"\n{image_md('EM log-likelihood per iteration', line_plot(series, 'EM log-likelihood', x=xs))}\n"
    return md
