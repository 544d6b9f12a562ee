"""Checkpoints and encoder files of a training run: written whole or not at all (``AtomicCheckpointIO``), checked
before a resume (``checkpoint_problem``), the newest whole one found when ``last.ckpt`` is corrupt
(``resume_checkpoint``), and the exported encoder read back (``load_encoder``)."""

import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from idtprior.models.resnet3d import ResNet3d


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint of the run folder cannot be resumed from (unreadable, truncated, or missing keys)."""


def write_atomic(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def load_encoder(path: str | Path) -> ResNet3d:
    """The :class:`ResNet3d` written by :func:`export_encoder`."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: name it, not the pickle
        raise ValueError(f"encoder {path}: unreadable ({first_line(e)})") from e
    if not isinstance(blob, dict) or not {"arch", "embed_dim", "width", "state_dict"} <= set(blob):
        raise ValueError(f"encoder {path}: not an encoder written by export_encoder")
    encoder = ResNet3d(blob["arch"], blob["embed_dim"], blob["width"])
    encoder.load_state_dict(blob["state_dict"])
    return encoder


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file then renamed: a run killed mid-save leaves the previous checkpoint
    whole, never a truncated one that a resume would choke on."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


def epochs_in_checkpoint(path: str | Path) -> int:
    """Epochs completed by the run that wrote the checkpoint ``path`` (checkpoints are written at epoch ends)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)  # mmap: the weights stay on disk
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except KeyError:
        return int(ckpt["epoch"]) + 1


CHECKPOINT_KEYS = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "epoch", "global_step")
"""What a resumable training checkpoint holds at least (Lightning's keys)."""


def checkpoint_problem(path: str | Path) -> str | None:
    """What makes ``path`` unusable as a training checkpoint (unreadable by ``torch.load``, truncated, not a
    checkpoint, missing keys), or None when it is whole. Reads every tensor: a torn file fails here, not mid-resume."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a truncated zip, a bad pickle, an empty file: all mean "corrupt"
        return f"unreadable ({first_line(e)})"
    if not isinstance(ckpt, dict):
        return f"holds a {type(ckpt).__name__}, not a checkpoint"
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if not missing and not (isinstance(ckpt["state_dict"], dict) and "bank.bank" in ckpt["state_dict"]):
        missing = ["state_dict['bank.bank']"]
    return f"missing keys {missing}" if missing else None


def epoch_checkpoints(checkpoints: Path) -> list[Path]:
    """The run's per-epoch checkpoints (``epoch<NNNN>.ckpt``), newest first."""
    found = [(int(m.group(1)), f) for f in checkpoints.glob("epoch*.ckpt")
             if (m := re.fullmatch(r"epoch(\d+)\.ckpt", f.name))]
    return [f for _, f in sorted(found, reverse=True)]


def resume_checkpoint(checkpoints: str | Path) -> Path | None:
    """The checkpoint a resumed run starts from: ``last.ckpt`` when it is whole, else the newest whole epoch checkpoint
    (the run keeps the last two), else None (train from the start). Every checkpoint passed over is named in a
    :class:`CorruptCheckpointWarning`. Reads only: every rank of a DDP job may call it at once."""
    checkpoints = Path(checkpoints)
    last = checkpoints / "last.ckpt"
    epochs = epoch_checkpoints(checkpoints) if checkpoints.is_dir() else []
    if not last.exists() and not epochs:
        return None
    bad: list[str] = []
    for path in ([last] if last.exists() else []) + epochs:
        problem = checkpoint_problem(path)
        if problem is None:
            if bad:
                warnings.warn(f"run {checkpoints.parent}: {'; '.join(bad)}; resuming from {path.name} "
                              f"({epochs_in_checkpoint(path)} epochs done)", CorruptCheckpointWarning, stacklevel=2)
            return path
        bad.append(f"checkpoint {path} is {problem}")
    if not last.exists():
        bad.insert(0, f"no {last}")
    warnings.warn(f"run {checkpoints.parent}: {'; '.join(bad)}; no checkpoint to resume from, training starts over "
                  f"from epoch 1", CorruptCheckpointWarning, stacklevel=2)
    return None


def whole_init_checkpoint(path: str | Path) -> Path:
    """The checkpoint ``init_from`` ``path`` stands for: ``path`` itself when it is whole; for a corrupt ``last.ckpt``
    of a finished run, the newest epoch checkpoint beside it when that is whole (with a warning): it holds the same
    weights, written at the same epoch end just before ``last.ckpt``. Else ``path``, whose load then names the fault."""
    path = Path(path)
    problem = checkpoint_problem(path) if path.name == "last.ckpt" and path.exists() else None
    if problem is None:
        return path
    newest = epoch_checkpoints(path.parent)[:1]
    if newest and checkpoint_problem(newest[0]) is None:
        warnings.warn(f"init_from {path} is {problem}; starting from {newest[0].name} beside it, the newest epoch "
                      f"checkpoint of that run ({epochs_in_checkpoint(newest[0])} epochs done)",
                      CorruptCheckpointWarning, stacklevel=2)
        return newest[0]
    return path


def put_in_place(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source`` (a hard link where the file system has them), by rename."""
    tmp = target.with_name(f".{target.name}.restore-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


def epochs_done(last: Path, fallback: int) -> int:
    """Epochs in ``last`` (under ddp_spawn the fit ran in other processes and this trainer's counter stayed 0); the
    trainer's count where it cannot be read (a DDP rank other than 0 while rank 0 puts a whole one in place)."""
    try:
        return epochs_in_checkpoint(last)
    except Exception:  # noqa: BLE001 - only the count is at stake, and rank 0 reports the checkpoint's
        return fallback
