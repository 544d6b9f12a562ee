"""Evaluation clips: several seeded random temporal windows of one video, each the centre square, as a batch.

The training code's temporal sampling (``temporal_indices``: a window of ``(length - 1) * step + 1`` frames, looped
over a shorter video) and its evaluation transform (``transform_clip`` with ``rng=None``: the centre square, resized,
mean-subtracted) are reused as they are, so an evaluation clip of a video is a training clip without augmentation.
Clip ``c`` of video ``index`` draws its start from ``numpy.random.default_rng([seed, index, c])``: the same clips
whatever the batch size, the number of loader workers or the order of the videos.
"""

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from idtprior.models.data import ClipSource, temporal_indices, collate_clips, transform_clip


def eval_clips(
    source: ClipSource, index: int, clip_length: int, crop_size: int, clips: int = 5, seed: int = 0,
    frame_step: int = 1,
) -> torch.Tensor:
    """``clips`` clips of video ``index``: ``(clips, 3, clip_length, crop_size, crop_size)`` float32, centre crops."""
    if clips < 1 or clip_length < 1 or crop_size < 1 or frame_step < 1:
        raise ValueError(f"clips {clips}, clip_length {clip_length}, crop_size {crop_size} and frame_step "
                         f"{frame_step} must be positive")
    n = source.num_frames(index)
    if n < 1:
        raise ValueError(f"video {index}: {n} frames, need at least 1")
    out = []
    for c in range(clips):
        start, want, positions = temporal_indices(n, clip_length, np.random.default_rng([seed, index, c]), frame_step)
        frames = np.asarray(source.read_clip(index, start, want))
        if frames.ndim != 4 or frames.shape[0] != want or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"video {index}: read_clip(start={start}, length={want}) returned shape {frames.shape} "
                             f"dtype {frames.dtype}, expected ({want}, H, W, 3) uint8")
        out.append(transform_clip(frames[positions], crop_size, None))  # (3, T, crop, crop)
    return torch.stack(out)


class EvalClipDataset(Dataset):
    """``(index, clips (clips, 3, T, crop, crop))`` for each of ``ids`` (indices into ``source``), in that order."""

    def __init__(self, source: ClipSource, ids: Sequence[int] | np.ndarray, clip_length: int, crop_size: int,
                 clips: int, seed: int, frame_step: int = 1) -> None:
        n = len(source)
        bad = [int(i) for i in ids if not 0 <= int(i) < n]
        if bad:
            raise ValueError(f"video ids {bad[:5]} outside the source's {n} videos")
        self.source, self.ids = source, [int(i) for i in ids]
        self.clip_length, self.crop_size, self.clips, self.seed, self.frame_step = (
            clip_length, crop_size, clips, seed, frame_step)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        index = self.ids[i]
        return index, eval_clips(self.source, index, self.clip_length, self.crop_size, self.clips, self.seed,
                                 self.frame_step)


def eval_loader(source: ClipSource, ids: Sequence[int] | np.ndarray, clip_length: int, crop_size: int, clips: int,
                seed: int, batch_videos: int, frame_step: int = 1, num_workers: int = 0) -> DataLoader:
    """Batches ``(indices (B,), clips (B, clips, 3, T, crop, crop))`` of ``ids`` in order."""
    return DataLoader(EvalClipDataset(source, ids, clip_length, crop_size, clips, seed, frame_step),
                      batch_size=max(1, batch_videos), num_workers=num_workers, collate_fn=collate_clips)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
