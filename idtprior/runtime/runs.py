"""What every stage flow run shares: its names (flow, run), the config its workspace remembers, the values it returns
and how it fails on a missing prerequisite.

No ``from __future__ import annotations`` here: it breaks pydantic parameters under ``flow.serve()``.
"""

import logging
import re

import yaml
from prefect import flow
from prefect.logging import get_run_logger
from prefect.states import Failed

from idtprior.config import PipelineConfig, parse_config
from idtprior.config.base import ConfigError
from idtprior.presets import config_path
from idtprior.runtime.errors import DiskFull, StageFailed
from idtprior.sources import StaleCode, check_process
from idtprior.storage import Workspace, hash_json
from idtprior.storage.integrity import IntegrityError
from idtprior.storage.lock import StageBusy, stage_lock
from idtprior.storage.upstream import UpstreamChanged

FLOW_PREFIX = "idtprior"
CONFIG_FILE = "config.yaml"
"""The config of the last pipeline run on a workspace (``<workspace>/config.yaml``): written by every pipeline run
(``idtprior run``, ``idtprior demo``, the ``idtprior-pretrain`` deployment) and by the first stage run on a workspace
that has none; what a stage run with an empty Config starts from. A single stage run's own config and overrides apply
to that run only."""
CONFIGS_DIR = "configs"
"""``<workspace>/configs/<hash>.yaml``: every config a stage run of the workspace ran with, stored by content
(``store_config``); a pipeline names its file in every stage run it starts, so a Retry reads what the pipeline read.
``configs/runs/<flow run id>``: the stored config a pipeline run resolved first, which its Retry uses again."""
_STORED = re.compile(r"/" + CONFIGS_DIR + r"/([0-9a-f]{16})\.yaml$")


def flow_name(stage: str) -> str:
    """The Prefect flow of a stage: ``idtprior-<stage>``, ``_`` -> ``-`` (``idtprior-fit-codebook``)."""
    return f"{FLOW_PREFIX}-{stage.replace('_', '-')}"


def workspace_name(workspace: str) -> str:
    """The workspace's folder name (``/data/runs/k400-a`` -> ``k400-a``): what run names show, not the whole path."""
    return str(workspace).rstrip("/").rsplit("/", 1)[-1] or str(workspace)


def _workspace_of(parameters: dict) -> str:
    """The workspace a run's parameters point at: a ``PipelineConfig``'s, the ``workspace`` parameter, the preset's
    or YAML file's own, or the folder name of a ``<workspace>/config.yaml`` path."""
    config = parameters.get("config")
    if isinstance(config, PipelineConfig):
        return config.workspace
    if parameters.get("workspace"):
        return parameters["workspace"]
    if isinstance(config, str) and config:
        try:
            path = config_path(config)
            return (yaml.safe_load(path.read_text()) or {}).get("workspace") or "workspace"
        except (ConfigError, OSError, yaml.YAMLError, AttributeError):
            return config
    return "workspace"


GENERATED_NAME = re.compile(r"[a-z]+-[a-z]+")
"""The names Prefect gives a run nobody named (two random words, ``brave-lion``)."""


def run_name(stage: str):
    """A ``flow_run_name`` callable: ``<workspace folder name>: <stage>``, unless the run was given a name (the Run
    Name typed in the UI's form is kept; the workspace and stage are in the run's parameters and first log line)."""

    def name() -> str:
        from prefect.runtime import flow_run

        given = flow_run.name
        if given and not GENERATED_NAME.fullmatch(given) and not given.endswith(f": {stage}"):
            return given
        return f"{workspace_name(_workspace_of(dict(flow_run.parameters)))}: {stage}"

    name.__name__ = f"{stage}_run_name"
    return name


def _config_data(config: PipelineConfig) -> dict:
    data = config.model_dump(mode="json")
    data["workspace"] = Workspace(config.workspace).url
    return data


def remember_config(config: PipelineConfig, if_missing: bool = False) -> None:
    """Write ``config`` to ``<workspace>/config.yaml`` (atomically), so a later stage run on the workspace from the UI
    defaults to it instead of a preset: a stage rerun never mixes a demo setting into a Kinetics workspace. Pipeline
    runs write it; a stage run only where the workspace has none yet (``if_missing``)."""
    ws = Workspace(config.workspace)
    if if_missing and ws.fs.exists(ws.path(CONFIG_FILE)):
        return
    header = "# the config of the last pipeline run on this workspace (written by idtprior; see README: Configs)\n"
    ws.write_bytes_atomic(ws.path(CONFIG_FILE),
                          (header + yaml.safe_dump(_config_data(config), sort_keys=False)).encode())


def store_config(config: PipelineConfig) -> str:
    """``config`` stored by content in ``<workspace>/configs/<hash>.yaml`` (written once, never changed); returns
    the file's path (its URL on an object store), which ``load_stored_config`` and a run's ``config`` parameter
    take."""
    ws = Workspace(config.workspace)
    data = _config_data(config)
    name = f"{hash_json(data)[:16]}.yaml"
    path = ws.path(CONFIGS_DIR, name)
    if not ws.fs.exists(path):
        header = "# a config a run of this workspace used, stored by content (its name is its hash): never edit\n"
        ws.write_bytes_atomic(path, (header + yaml.safe_dump(data, sort_keys=False)).encode())
    return path if ws.is_local else f"{ws.url}/{CONFIGS_DIR}/{name}"


def is_stored_config(ref: str) -> bool:
    """True for the path or URL of a config ``store_config`` wrote."""
    return bool(_STORED.search(str(ref)))


def load_stored_config(ref: str) -> PipelineConfig:
    """The config stored at ``ref`` (``store_config``), checked against its name: a ConfigError naming the file
    when it is missing or was edited since."""
    import fsspec

    try:
        with fsspec.open(ref, "rb") as f:
            raw = f.read()
    except FileNotFoundError as e:
        raise ConfigError(f"stored config {ref}: no such file (the workspace's configs/ folder was removed?)") from e
    try:
        config = parse_config(yaml.safe_load(raw) or {}, origin=ref)
    except yaml.YAMLError as e:
        raise ConfigError(f"stored config {ref}: not valid YAML: {e}") from e
    digest = hash_json(_config_data(config))[:16]
    if digest != _STORED.search(str(ref)).group(1):
        raise ConfigError(f"stored config {ref}: its content hashes to {digest}, not to its name: it was edited "
                          f"after it was stored; give the run a preset or a YAML file instead")
    return config


def remembered_config(workspace: str) -> PipelineConfig | None:
    """The config ``workspace`` was last run with, or None when it has none (never run, or run before this file)."""
    ws = Workspace(workspace)
    raw = ws.read_bytes(ws.path(CONFIG_FILE))
    if raw is None:
        return None
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{ws.path(CONFIG_FILE)}: not valid YAML: {e}") from e
    return parse_config(data, origin=ws.path(CONFIG_FILE))


def how_to_run(stage: str) -> str:
    """How a user runs ``stage``: from the command line or from its deployment in the UI."""
    return f"`idtprior run CONFIG --stages {stage}`, or the {flow_name(stage)} deployment in the Prefect UI"


def missing_stage(ws: Workspace, what: str, stage: str) -> ConfigError:
    """The error of a stage whose input is missing: what is missing, which stage makes it, and how to run that."""
    return ConfigError(f"workspace {ws.url}: {what}; run the {stage} stage first ({how_to_run(stage)})")


def fresh_copy(value):
    # a new str object with the same text (a one-character str is a shared singleton and cannot be copied)
    return "".join(list(value)) if type(value) is str and len(value) > 1 else value


def unshared(counts: dict) -> dict:
    """``counts`` with every string key and value a fresh object.

    Prefect links a flow's return value AND each of its items to the flow run by ``id()``, and draws an edge from that
    run to any later run whose parameters hold an object with one of those ids. The counts' strings are interned
    literals ("idt", "stage", ...) that the config holds too (the stage list, ``cluster_source: idt``, ``init_from:
    pretrain_la``), so every later stage was drawn as a child of the idt run. Fresh copies are held by nothing else;
    the numbers are computed in the run, so they are fresh objects already (or small ints, which Prefect skips)."""
    return {fresh_copy(k): fresh_copy(v) for k, v in counts.items()}


UNDERSTOOD = (ConfigError, StageBusy, StaleCode, StageFailed, DiskFull, IntegrityError, UpstreamChanged)
"""Failures the pipeline understood and says in one line: a missing prerequisite or input, a refused setting, another
run holding the stage's lock, code changed on disk, chunks that failed (each chunk's task run has its details), a
full disk, damaged stored data, an upstream record changed during the run. Anything else is a bug: its traceback is
kept where Prefect puts it."""


ENGINE_EXIT = "Engine execution exited with unexpected exception"
"""What Prefect's engine logs (with the traceback) when a flow run it started from an entrypoint (a deployment run of
``idtprior serve`` or a worker) ends Failed: it re-raises the run's exception after the run has ended."""


class UnderstoodFailures(logging.Filter):
    """Drops the engine's ``ENGINE_EXIT`` line and traceback when the run ended with a failure the pipeline understood
    (``UNDERSTOOD``): its run has logged that one message already (``stage_failed``) and the traceback at debug
    level. Any other exception keeps the engine's line: it is a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, UNDERSTOOD) and str(record.msg).startswith(ENGINE_EXIT))


def quiet_understood_failures() -> None:
    """Install ``UnderstoodFailures`` on Prefect's flow run logger (the engine's ``error_logger``), once."""
    logger = logging.getLogger("prefect.flow_runs")
    if not any(isinstance(f, UnderstoodFailures) for f in logger.filters):
        logger.addFilter(UnderstoodFailures())


def stage_failed(stage: str, exc: Exception):
    """A Failed state for a stage that failed in a way the pipeline understood (``UNDERSTOOD``): its one-line message,
    logged once, instead of a traceback in the stage's run, another in the pipeline's and the engine's own in the
    terminal of the process that ran it. The traceback is logged at debug level. The exception rides in the state, so
    a Python caller still gets it raised (a ``ConfigError``, a ``StageBusy``, a ``StageFailed``)."""
    message = str(exc) if str(exc).startswith(stage) else f"{stage}: {exc}"
    logger = get_run_logger()
    logger.error(message)
    logger.debug(f"{stage}: the failure's traceback", exc_info=exc)
    return Failed(message=message, data=exc)


quiet_understood_failures()  # every process that runs an idtprior flow imports this module first


def stage_flow(stage: str):
    """Make a stage's body ``(config, dask_address, progress) -> counts`` its flow ``idtprior-<stage>``: runs named
    ``<workspace folder>: <stage>``, the stage's lock held for the run (``storage.lock.stage_lock``: a second run of
    the stage on the workspace fails at once naming the holder), the config stored by content and logged (and remembered
    as ``config.yaml`` where the workspace has none), fresh return
    values (graph edges) and a one-message Failed state for a stage that cannot start. The Python signature stays
    ``(config, dask_address=None, progress=True)`` for the CLI and the tests."""

    def decorate(body):
        def run(config: PipelineConfig, dask_address: str | None = None, progress: bool = True) -> dict:
            try:
                check_process(f"stage {stage}")  # this process runs the files on disk (``idtprior.sources``)
                # the stage's lock for the whole run (a second run of the stage fails at once naming this one)
                with stage_lock(Workspace(config.workspace), stage):
                    remember_config(config, if_missing=True)
                    get_run_logger().info(f"{stage}: config {store_config(config)}")
                    return unshared(body(config, dask_address, progress))
            except UNDERSTOOD as e:
                return stage_failed(stage, e)

        run.__name__, run.__qualname__, run.__module__, run.__doc__ = (
            body.__name__, body.__qualname__, body.__module__, body.__doc__)
        return flow(name=flow_name(stage), flow_run_name=run_name(stage),
                    description=(body.__doc__ or "").strip().split("\n")[0] or None)(run)

    return decorate
