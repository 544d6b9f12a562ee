"""The embedded demo's data: render it where it is missing, check it where it exists, point a config at it.

Shared by ``idtprior demo`` and the UI's ``demo`` preset (a Quick run renders the data it needs, as the command does).
"""

from collections.abc import Callable
from pathlib import Path

from idtprior.config import ConfigError, PipelineConfig


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
    is, check it was rendered with those settings (a ConfigError naming each difference if not)."""
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
