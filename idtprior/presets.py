"""A run's config from what a person gives: a preset or a YAML path, dotted overrides, another workspace or source,
and the demo preset's data.

One place for the command line and the Prefect UI's forms, so both accept the same things and refuse them the same
way: ``idtprior run CONFIG --set pretrain_la.epochs=5`` (``parse_assignments``) and the form's Overrides field
(``{"pretrain_la.epochs": 5}``) both end in ``apply_overrides``, which names the key and the value it refuses before
anything is created.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from idtprior.config import PipelineConfig, parse_config
from idtprior.config.base import ConfigError

CONFIGS = Path(__file__).resolve().parent / "configs"
PRESETS = tuple(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
"""The bundled configs a run can name instead of a YAML path (``demo``, ``kinetics400``)."""


def config_path(config: str) -> Path:
    """The YAML file a ``config`` parameter names: a preset (``demo``, ``kinetics400``) or a path."""
    if config in PRESETS:
        return CONFIGS / f"{config}.yaml"
    path = Path(config).expanduser()
    if not path.is_file():
        raise ConfigError(f"config {config!r}: neither a preset ({', '.join(PRESETS)}) nor a YAML file")
    return path


def apply_overrides(config: PipelineConfig, overrides: dict[str, Any] | None) -> PipelineConfig:
    """``config`` with dotted keys set (``{"pretrain_la.epochs": 5}``), validated as a whole: an unknown key or a
    refused value is a ConfigError naming the key and the value."""
    if not overrides:
        return config
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides: expected a mapping of dotted keys to values, got {overrides!r}")
    data = config.model_dump(mode="json")
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = data
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:i]) or "the config"
                known = sorted(node) if isinstance(node, dict) else []
                if not isinstance(node, dict):
                    raise ConfigError(f"overrides: key '{key}' (value {value!r}): {where} is a setting, not a section")
                raise ConfigError(f"overrides: unknown key '{key}' (value {value!r}): {where} has no {part!r}; it has "
                                  f"{', '.join(known)}")
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return parse_config(data, origin="overrides")


def parse_assignments(texts: list[str] | None) -> dict[str, Any]:
    """The command line's ``--set KEY=VALUE`` options as the overrides ``apply_overrides`` takes: each value read as
    YAML (``5`` an int, ``true`` a bool, ``[a, b]`` a list, ``null`` None, anything else the text). A later ``--set``
    of the same key wins. A text with no ``=``, an empty key or a value that is not YAML is a ConfigError naming it."""
    out: dict[str, Any] = {}
    for text in texts or []:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. pretrain_la.epochs=5")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {text!r}: the value {raw!r} is not a YAML value ({e.__class__.__name__})") \
                from e
    return out


def with_inputs(cfg: PipelineConfig, workspace: str | None = None, source: str | None = None,
                video_root: str | None = None) -> PipelineConfig:
    """``cfg`` with another workspace, source or video root where given."""
    updates: dict[str, Any] = {}
    if workspace:
        updates["workspace"] = workspace
    if source:
        # the config's video_root belongs to its own source: a new source resolves against video_root, else its folder
        updates["ingest"] = {"source": source, "source_format": "auto", "video_root": video_root}
    elif video_root:
        updates["ingest"] = {"video_root": video_root}
    return cfg.with_updates(**updates) if updates else cfg


def demo_inputs(cfg: PipelineConfig, data: str | Path, workspace: str | Path) -> PipelineConfig:
    """``cfg`` with its workspace and its inputs (the split list, the videos, the labels for the kNN evaluation) in the
    demo data folder ``data``; absolute paths, so a run from another folder (a worker) reads the same files."""
    data = Path(data).resolve()
    return cfg.with_updates(workspace=str(Path(workspace).resolve()), ingest={
        "source": str(data / "splits" / "trainlist01.txt"), "video_root": str(data / "videos"),
        "source_format": "ucf_split", "labels_file": None},
        pretrain={"eval_labels_file": str(data / "labels.csv")})


def ensure_demo_data(cfg: PipelineConfig, data: str | Path, progress: bool = True,
                     say: Callable[[str], None] = print) -> None:
    """Render the synthetic benchmark into ``data`` with the config's ``demo`` settings when it is not there; when it
    is, check it was rendered with those settings (a ConfigError naming each difference if not). Shared by ``idtprior
    demo`` and the UI's ``demo`` preset (a Quick run renders the data it needs, as the command does)."""
    from idtprior.datasets.synthetic import demo_data_mismatch, make_demo_data

    data = Path(data)
    settings = cfg.demo.model_dump()
    if not (data / "labels.csv").exists():
        make_demo_data(data, **settings, progress=progress)
        return
    try:
        differ = demo_data_mismatch(data, settings)
    except FileNotFoundError as e:
        say(f"demo data already in {data}; its settings cannot be checked ({e}); delete it to render again")
        return
    if differ:
        raise ConfigError(f"the demo data in {data} was rendered with other settings than the config's demo section:"
                          "\n  " + "\n  ".join(differ) + f"\ndelete {data} to render it again, or use another data "
                          "folder")
    say(f"demo data already in {data}, rendered with the config's settings (delete it to render again)")
