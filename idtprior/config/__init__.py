"""Typed settings: one pydantic model per stage and a ``PipelineConfig`` holding them, loaded from YAML.

Every model forbids unknown keys and bounds its numbers, so a typo or an out-of-range value fails at load time with the
key path and the offending value in the message. Inside the package, stages take these models (or plain values).

This module holds the whole (``PipelineConfig``, ``STAGES``, loading); the sections are in ``config.base`` (what every
section shares, the key rules), ``config.stages`` (the data stages), ``config.training`` (training and evaluation)
and ``config.compute`` (the Dask cluster).
"""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator

from idtprior.config.base import ConfigError, Section
from idtprior.config.compute import DaskConfig
from idtprior.config.stages import (ClusterConfig, CodebookConfig, DecodeConfig, DetectConfig, EncodeConfig, IDTConfig,
                                    IngestConfig)
from idtprior.config.training import (EvaluateConfig, PretrainConfig, PretrainIRConfig, PretrainLABankConfig,
                                      PretrainLAConfig, SupervisedConfig, TuneJointConfig)

STAGES = ("ingest", "decode", "detect", "idt", "fit_codebook", "encode", "cluster", "pretrain_ir", "pretrain_la",
          "tune_joint", "pretrain_la_bank", "supervised", "evaluate")
"""The stages that exist, in pipeline order. Later stages join this tuple when they land."""

PoolsConfig = create_model(
    "PoolsConfig", __base__=Section, __doc__="The work pool each stage's run goes to when the pipeline runs from a "
    "deployment: auto (training and Mask R-CNN detection on the GPU pool, the rest on the CPU pool), cpu or gpu.",
    **{stage: (Literal["auto", "cpu", "gpu"], Field("auto", description=f"the pool of {stage}'s runs"))
       for stage in STAGES})
"""One ``auto | cpu | gpu`` field per stage, generated from ``STAGES`` (a stage added there gets its field)."""


class DemoDataConfig(Section):
    """The synthetic motion benchmark (embedded demo data)."""

    videos_per_class: int = Field(40, ge=1, le=100000)
    frames: int = Field(64, ge=2, le=100000)
    width: int = Field(160, ge=16, le=4096)
    height: int = Field(120, ge=16, le=4096)
    fps: int = Field(25, ge=1, le=240)
    camera_motion_fraction: float = Field(0.3, ge=0, le=1)
    test_fraction: float = Field(0.3, gt=0, lt=1)
    seed: int = Field(0, ge=0, description="seeds every random choice of this section")
    heldout_appearance: bool = Field(False, description="test videos whose backgrounds, actor shapes and colours "
                                                        "never occur in training")


class PipelineConfig(Section):
    """Everything a pipeline run needs. ``workspace`` may be a local path or an fsspec URL."""

    workspace: str = "workspace"
    stages: tuple[str, ...] = STAGES
    chunk_concurrency: int = Field(4, ge=1, le=1024, description="chunk task runs in flight at once")
    ingest: IngestConfig = IngestConfig()
    decode: DecodeConfig = DecodeConfig()
    detect: DetectConfig = DetectConfig()
    idt: IDTConfig = IDTConfig()
    codebook: CodebookConfig = CodebookConfig()
    encode: EncodeConfig = EncodeConfig()
    cluster: ClusterConfig = ClusterConfig()
    pretrain: PretrainConfig = PretrainConfig()
    pretrain_ir: PretrainIRConfig = PretrainIRConfig()
    pretrain_la: PretrainLAConfig = PretrainLAConfig()
    tune_joint: TuneJointConfig = TuneJointConfig()
    pretrain_la_bank: PretrainLABankConfig = PretrainLABankConfig()
    supervised: SupervisedConfig = SupervisedConfig()
    dask: DaskConfig = DaskConfig()
    pools: PoolsConfig = PoolsConfig()
    demo: DemoDataConfig = DemoDataConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages):
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known stages: {list(STAGES)}")
        return stages

    @field_validator("workspace")
    @classmethod
    def _workspace_is_a_folder(cls, workspace):
        # a local path whose first existing part is a file cannot become the workspace folder: refused here, where
        # the key is known, instead of a traceback from makedirs when the run starts
        if "://" in workspace and not workspace.startswith("file://"):
            return workspace
        path = Path(workspace.removeprefix("file://")).expanduser()
        try:
            for part in (path, *path.parents):
                if part.exists():
                    if not part.is_dir():
                        inside = "" if part == path else f" (it would be inside {part})"
                        raise ValueError(f"{part} is a file, not a folder{inside}")
                    break
        except OSError as e:  # a name too long, a folder that cannot be searched
            raise ValueError(f"cannot be used as a folder: {e}") from e
        return workspace

    def with_updates(self, **sections) -> "PipelineConfig":
        """A copy with some values replaced, validated: ``cfg.with_updates(decode={"short_side": 64})``."""
        data = self.model_dump()
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return parse_config(data, origin="updates")


def parse_config(data: dict, origin: str = "config") -> PipelineConfig:
    """Validate a mapping into a ``PipelineConfig``; errors name the key path and the offending value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: top level must be a mapping, got {type(data).__name__}: {data!r}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            value = err.get("input")
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown key '{key}' (value {value!r})")
            else:  # a validator's own message without pydantic's "Value error, " in front
                msg = err["msg"].removeprefix("Value error, ")
                shown = repr(value)
                if len(shown) > 300:  # a model-level check gets the whole section as its value
                    shown = shown[:150] + " ... " + shown[-100:]
                lines.append(f"key '{key}': {msg} (value {shown})")
        raise ConfigError(f"{origin}: " + "; ".join(lines)) from e


def load_config(path: str | Path) -> PipelineConfig:
    """Load a YAML config file into a ``PipelineConfig``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read: {e}") from e
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not valid YAML: {_yaml_problem(e)}") from e
    return parse_config(data, origin=f"config {path}")


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: where, what, and the construct it was in (PyYAML's own text spans five)."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(e).split())
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context:
        text += f" ({context}" + (f" at line {start.line + 1}, column {start.column + 1})" if start else ")")
    return text


def bundled_config(name: str) -> Path:
    """Path of a config shipped with the package: ``bundled_config("demo")``."""
    path = Path(__file__).parents[1] / "configs" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"no bundled config named {name!r} (looked for {path})")
    return path
