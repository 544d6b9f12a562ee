"""Training clips over an abstract clip source, with the augmentations of Hara et al. / Wu et al., and a DataModule.

A clip source is any object with ``len(source)`` (number of videos), ``num_frames(index) -> int`` and
``read_clip(index, start, length) -> (length, H, W, 3) uint8``. The workspace's Zarr-backed frames are one such
source; :class:`ArrayClipSource` (in-memory arrays) is another, used by tests and benchmarks.

Randomness: the sampler yields ``(index, epoch)`` keys and every clip draws its temporal start, crop, jitter, grayscale
and flip from ``numpy.random.default_rng([seed, epoch, index])``. A clip is therefore the same whatever the number of
worker processes, their scheduling, or whether the run was resumed from a checkpoint - which a per-worker RNG cannot
promise - and the epoch-seeded shuffle makes the visiting order resumable too.
"""

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

SCALES: tuple[float, ...] = (1.0, 0.84089641525, 0.70710678118, 0.59460355750, 0.5)  # 2^(-i/4), Hara et al.
MEAN_RGB: tuple[float, float, float] = (114.7748 / 255, 107.7354 / 255, 99.4750 / 255)  # ActivityNet mean, Hara et al.


@runtime_checkable
class ClipSource(Protocol):
    """What :class:`ClipDataset` reads from."""

    def __len__(self) -> int: ...

    def num_frames(self, index: int) -> int: ...

    def read_clip(self, index: int, start: int, length: int) -> np.ndarray: ...  # (length, H, W, 3) uint8


class ArrayClipSource:
    """A clip source over in-memory videos, each ``(T_i, H, W, 3)`` uint8."""

    def __init__(self, videos: Sequence[np.ndarray]) -> None:
        for i, v in enumerate(videos):
            if v.ndim != 4 or v.shape[-1] != 3 or v.dtype != np.uint8 or v.shape[0] < 1:
                raise ValueError(f"video {i}: need (T>=1, H, W, 3) uint8, got shape {v.shape} dtype {v.dtype}")
        self.videos = list(videos)

    def __len__(self) -> int:
        return len(self.videos)

    def num_frames(self, index: int) -> int:
        return int(self.videos[index].shape[0])

    def read_clip(self, index: int, start: int, length: int) -> np.ndarray:
        return self.videos[index][start : start + length]


class FunctionClipSource:
    """Adapts two callables and a video count to :class:`ClipSource`."""

    def __init__(self, read_clip: Callable[[int, int, int], np.ndarray], num_frames: Callable[[int], int], n: int) -> None:
        self._read, self._num, self._n = read_clip, num_frames, n

    def __len__(self) -> int:
        return self._n

    def num_frames(self, index: int) -> int:
        return int(self._num(index))

    def read_clip(self, index: int, start: int, length: int) -> np.ndarray:
        return self._read(index, start, length)


def moving_squares(
    n: int, frames: int = 12, size: int = 40, seed: int = 0, n_motions: int = 4
) -> tuple[list[np.ndarray], np.ndarray]:
    """Tiny synthetic videos: a coloured square moving in one of ``n_motions`` directions on a noisy background.

    Returns videos ``n x (frames, size, size, 3)`` uint8 and motion labels ``(n,)`` int64 (``i % n_motions``).
    """
    rng = np.random.default_rng(seed)
    directions = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, n_motions, endpoint=False)]
    labels = np.arange(n) % n_motions
    videos = []
    side = max(2, size // 4)
    for i in range(n):
        bg = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
        colour = rng.integers(120, 256, size=3, dtype=np.uint8)
        y0, x0 = rng.uniform(side, size - 2 * side, size=2)
        dy, dx = directions[labels[i]]
        video = np.repeat(bg[None], frames, axis=0)
        for t in range(frames):
            y = int(round(y0 + dy * t * 1.5)) % (size - side)
            x = int(round(x0 + dx * t * 1.5)) % (size - side)
            video[t, y : y + side, x : x + side] = colour
        videos.append(video)
    return videos, labels.astype(np.int64)


def temporal_indices(n_frames: int, length: int, rng: np.random.Generator | None, step: int = 1
                      ) -> tuple[int, int, np.ndarray]:
    """Start frame, number of frames to read, and the ``(length,)`` positions into them: every ``step``-th frame of a
    span of ``(length - 1) * step + 1`` frames, looped over the whole video when it is shorter than the span."""
    span = (length - 1) * step + 1
    if n_frames >= span:
        start = int(rng.integers(0, n_frames - span + 1)) if rng is not None else (n_frames - span) // 2
        return start, span, np.arange(length) * step
    return 0, n_frames, (np.arange(length) * step) % n_frames


def _hue_matrix(hue: float) -> torch.Tensor:
    """The (3, 3) float32 matrix rotating RGB chroma by ``hue`` turns in YIQ space (a linear stand-in for HSV)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    c, s = math.cos(2 * math.pi * hue), math.sin(2 * math.pi * hue)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return torch.linalg.inv(to_yiq) @ rot @ to_yiq


def _adjust_hue(x: torch.Tensor, hue: float) -> torch.Tensor:
    """Rotate the chroma of ``x (T, 3, H, W)`` in [0, 1] by ``hue`` turns (:func:`_hue_matrix`)."""
    return torch.einsum("ij,tjhw->tihw", _hue_matrix(hue).to(x.device), x)


def _gray(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Luma of the RGB channels at ``dim``, kept as a channel of one: (T, 3, H, W) -> (T, 1, H, W) by default."""
    r, g, b = x.unbind(dim)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(dim)


@dataclass(frozen=True)
class AugmentDraw:
    """One clip's augmentation: the crop square (``side`` at row ``y``, column ``x``), grayscale, the jitter factors
    (``bcs``: brightness, contrast, saturation; None: no jitter), the hue shift in turns, and the horizontal flip."""

    side: int
    y: int
    x: int
    gray: bool = False
    bcs: tuple[float, float, float] | None = None
    hue: float = 0.0
    flip: bool = False


def draw_augment(
    rng: np.random.Generator | None, height: int, width: int, scales: Sequence[float] = SCALES,
    grayscale_p: float = 0.2, jitter: float = 0.4, flip: bool = True,
) -> AugmentDraw:
    """The draws of :func:`transform_clip` for a ``height x width`` video, in its order (crop scale, row, column,
    grayscale, brightness/contrast/saturation, hue, flip); ``rng=None``: the centre square and nothing else."""
    short = min(height, width)
    if rng is None:
        return AugmentDraw(short, (height - short) // 2, (width - short) // 2)
    side = max(1, int(round(short * scales[int(rng.integers(len(scales)))])))
    y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    gray = bool(rng.random() < grayscale_p)
    bcs, hue = None, 0.0
    if jitter > 0:
        bcs = tuple(float(v) for v in rng.uniform(max(0.0, 1 - jitter), 1 + jitter, size=3))
        hue = float(rng.uniform(-min(jitter, 0.5), min(jitter, 0.5)))
    flipped = bool(flip and rng.random() < 0.5)
    return AugmentDraw(side, y, x, gray, bcs, hue, flipped)  # type: ignore[arg-type]


def transform_clip(
    frames: np.ndarray,
    crop_size: int,
    rng: np.random.Generator | None,
    scales: Sequence[float] = SCALES,
    grayscale_p: float = 0.2,
    jitter: float = 0.4,
    flip: bool = True,
) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 frames -> ``(3, T, crop, crop)`` float32, mean-subtracted, one draw for the whole clip.

    Training (``rng`` given): a square crop of side ``scale * min(H, W)`` (scale drawn from ``scales``) at a random
    position, resized to ``crop_size``; grayscale with probability ``grayscale_p``; brightness, contrast, saturation and
    hue jitter of strength ``j = jitter`` (factors in [1-j, 1+j], hue shift in [-j, j] turns, j capped at 0.5 for
    hue) in that order;
    horizontal flip with probability 0.5. Evaluation (``rng=None``): the centre square, resized, nothing else.
    :class:`DeviceAugment` applies the same draws to a batch of uint8 crops on the training device.
    """
    d = draw_augment(rng, frames.shape[1], frames.shape[2], scales, grayscale_p, jitter, flip)
    crop = torch.from_numpy(np.ascontiguousarray(frames[:, d.y : d.y + d.side, d.x : d.x + d.side]))  # (T, s, s, 3)
    clip = crop.permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, s, s)
    if d.side != crop_size:
        clip = F.interpolate(clip, size=(crop_size, crop_size), mode="bilinear", align_corners=False)
    if d.gray:
        clip = _gray(clip).expand(-1, 3, -1, -1).contiguous()
    if d.bcs is not None:
        b, c, s = d.bcs
        clip = (clip * b).clamp_(0, 1)
        mean = _gray(clip).mean()
        clip = ((clip - mean) * c + mean).clamp_(0, 1)
        g = _gray(clip)
        clip = ((clip - g) * s + g).clamp_(0, 1)
        clip = _adjust_hue(clip, d.hue).clamp_(0, 1)
    if d.flip:
        clip = clip.flip(-1)
    clip = clip - clip.new_tensor(MEAN_RGB)[None, :, None, None]
    return clip.permute(1, 0, 2, 3).contiguous()  # (3, T, crop, crop)


AUGMENT_ON = ("loader", "device")

def _draw_row(d: AugmentDraw) -> np.ndarray:
    """A raw training clip's draw as a float64 row: side, row, column, grayscale, brightness, contrast, saturation,
    hue, flip, jitter applied (0/1)."""
    b, c, s = d.bcs if d.bcs is not None else (1.0, 1.0, 1.0)
    return np.array([d.side, d.y, d.x, d.gray, b, c, s, d.hue, d.flip, d.bcs is not None], dtype=np.float64)


def collate_raw(batch: list[tuple[int, torch.Tensor, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[(index, crop (T, s, s, 3) uint8, draw row)]`` -> indices ``(B,)`` int64, every crop's bytes end to end
    ``(sum T*s*s*3,)`` uint8 (no padding: crops differ in size), draws ``(B, 10)`` float64 (:class:`DeviceAugment`)."""
    return (torch.tensor([b[0] for b in batch], dtype=torch.long),
            torch.cat([b[1].reshape(-1) for b in batch]),
            torch.from_numpy(np.stack([b[2] for b in batch])))


class DeviceAugment:
    """:func:`transform_clip`'s resize, grayscale, colour jitter, flip and mean subtraction for a whole batch of uint8
    crops, on the device the batch is on (the training GPU): loader workers only read and crop, and send a quarter of
    the bytes of a float32 clip or less.

    Equal to :func:`transform_clip` with the same draws to float32 rounding (resizing groups the crops by size, so each
    crop is resized exactly as on its own; the per-clip jitter factors and hue matrices are the same float32 values).
    """

    def __init__(self, clip_length: int, crop_size: int) -> None:
        self.clip_length, self.crop_size = clip_length, crop_size

    def __call__(self, flat: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """``flat`` crops and ``draws`` as :func:`collate_raw` gives them -> clips ``(B, 3, T, crop, crop)`` float32."""
        t, k = self.clip_length, self.crop_size
        rows = draws.cpu().numpy()  # B x 10 small numbers: the host decides the grouping
        n = len(rows)
        sides = rows[:, 0].astype(np.int64)
        sizes = t * sides * sides * 3
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        if flat.numel() != offsets[-1]:
            raise ValueError(f"raw batch: {flat.numel()} bytes of crops, the draws' sides need {offsets[-1]}")
        out = torch.empty((n, t, 3, k, k), dtype=torch.float32, device=flat.device)
        for side in np.unique(sides):
            members = np.flatnonzero(sides == side)
            crops = torch.stack([flat[offsets[i]:offsets[i + 1]].view(t, side, side, 3) for i in members])
            clip = crops.permute(0, 1, 4, 2, 3).float().div_(255.0).reshape(len(members) * t, 3, side, side)
            if side != k:
                clip = F.interpolate(clip, size=(k, k), mode="bilinear", align_corners=False)
            out[torch.from_numpy(members).to(flat.device)] = clip.reshape(len(members), t, 3, k, k)
        gray = torch.from_numpy(rows[:, 3] > 0).to(flat.device)
        if gray.any():
            out = torch.where(gray[:, None, None, None, None], _gray(out, 2).expand(-1, -1, 3, -1, -1), out)
        jittered = rows[:, 9] > 0
        if jittered.any():
            if not jittered.all():
                raise ValueError("raw batch: jitter on some clips only (a dataset jitters all of its clips or none)")
            f32 = torch.from_numpy(rows[:, 4:7].astype(np.float32)).to(flat.device)
            b, c, s = (f32[:, i, None, None, None, None] for i in range(3))
            out = (out * b).clamp_(0, 1)
            mean = _gray(out, 2).mean(dim=(1, 2, 3, 4), keepdim=True)
            out = ((out - mean) * c + mean).clamp_(0, 1)
            g = _gray(out, 2)
            out = ((out - g) * s + g).clamp_(0, 1)
            hue = torch.stack([_hue_matrix(h) for h in rows[:, 7]]).to(flat.device)  # (B, 3, 3)
            out = torch.einsum("bij,btjhw->btihw", hue, out).clamp_(0, 1)
        flip = torch.from_numpy(rows[:, 8] > 0).to(flat.device)
        if flip.any():
            out = torch.where(flip[:, None, None, None, None], out.flip(-1), out)
        out = out - out.new_tensor(MEAN_RGB)[None, None, :, None, None]
        return out.permute(0, 2, 1, 3, 4).contiguous()  # (B, 3, T, crop, crop)


class ClipDataset(Dataset):
    """``(index, clip (3, T, crop, crop) float32)`` per video of a :class:`ClipSource`.

    Keys are ``index`` or ``(index, epoch)`` (what :class:`EpochSampler` yields). ``train=False`` gives the deterministic
    centre clip, for exporting embeddings. ``raw=True`` (training clips only) gives ``(index, crop, draw row)`` instead:
    the uint8 crop ``(T, s, s, 3)`` and the draws that :class:`DeviceAugment` applies on the device
    (:func:`collate_raw` batches them).
    """

    def __init__(
        self,
        source: ClipSource,
        clip_length: int = 16,
        crop_size: int = 112,
        train: bool = True,
        seed: int = 0,
        scales: Sequence[float] = SCALES,
        grayscale_p: float = 0.2,
        jitter: float = 0.4,
        flip: bool = True,
        frame_step: int = 1,
        raw: bool = False,
    ) -> None:
        if clip_length < 1 or crop_size < 1 or frame_step < 1:
            raise ValueError(f"clip_length {clip_length}, crop_size {crop_size} and frame_step {frame_step} must be "
                             f"positive")
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"crop scales {tuple(scales)} must be in (0, 1]")
        if not 0 <= grayscale_p <= 1 or not 0 <= jitter <= 1:
            raise ValueError(f"grayscale_p {grayscale_p} and jitter {jitter} must be in [0, 1]")
        self.source, self.clip_length, self.crop_size = source, clip_length, crop_size
        self.train, self.seed, self.scales = train, seed, tuple(scales)
        self.grayscale_p, self.jitter, self.flip = grayscale_p, jitter, flip
        self.frame_step = frame_step
        if raw and not train:
            raise ValueError("raw clips are training clips: evaluation clips are transformed in the loader")
        self.raw = raw

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[int, torch.Tensor] | tuple[int, torch.Tensor, np.ndarray]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), 0)
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
        n = self.source.num_frames(index)
        if n < 1:
            raise ValueError(f"video {index}: {n} frames, need at least 1")
        start, want, positions = temporal_indices(n, self.clip_length, rng, self.frame_step)
        frames = np.asarray(self.source.read_clip(index, start, want))
        if frames.ndim != 4 or frames.shape[0] != want or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"video {index}: read_clip(start={start}, length={want}) returned shape {frames.shape} dtype "
                f"{frames.dtype}, expected ({want}, H, W, 3) uint8"
            )
        if self.raw:
            d = draw_augment(rng, frames.shape[1], frames.shape[2], self.scales, self.grayscale_p, self.jitter,
                             self.flip)
            crop = np.ascontiguousarray(frames[positions, d.y : d.y + d.side, d.x : d.x + d.side])
            return index, torch.from_numpy(crop), _draw_row(d)
        clip = transform_clip(
            frames[positions], self.crop_size, rng, self.scales, self.grayscale_p, self.jitter, flip=self.flip
        )
        return index, clip


class EpochSampler(Sampler):
    """Yields ``(index, epoch)``: a permutation seeded by ``(seed, epoch)``, sharded over ``world_size`` ranks.

    Like ``DistributedSampler`` it pads with repeated indices so every rank gets the same number of keys (DDP needs
    equal step counts); ``set_epoch`` is called by Lightning before each epoch.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if n < 1:
            raise ValueError(f"sampler over {n} videos: need at least one")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = len(self) * self.world_size
        order = np.concatenate([order, order[: total - self.n]]) if total > self.n else order
        for i in order[self.rank : total : self.world_size]:
            yield int(i), self.epoch


def _seed_worker(worker_id: int) -> None:
    # clips draw from their own (seed, epoch, index) RNG; this only tames third-party global RNG use and threads
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


def collate_clips(batch: list[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(index, clip)]`` -> indices ``(B,)`` int64, clips ``(B, 3, T, H, W)`` float32."""
    return torch.tensor([b[0] for b in batch], dtype=torch.long), torch.stack([b[1] for b in batch])


class ClipDataModule(pl.LightningDataModule):
    """Training and evaluation loaders over a :class:`ClipSource` (worker processes, pinned memory, prefetch)."""

    def __init__(
        self,
        source: ClipSource,
        clip_length: int = 16,
        crop_size: int = 112,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = True,
        pin_memory: bool | None = None,
        prefetch_factor: int = 4,
        augment: dict[str, Any] | None = None,
        frame_step: int = 1,
        augment_on: str = "loader",
    ) -> None:
        """``augment``: the training clips' ``scales``, ``grayscale_p``, ``jitter``, ``flip`` (see :class:`ClipDataset`;
        default the paper's). ``frame_step``: clips take every ``frame_step``-th frame (training and evaluation).
        ``augment_on``: ``"loader"`` transforms training clips in the workers; ``"device"`` has the workers send uint8
        crops and transforms each batch on the training device after the transfer (:class:`DeviceAugment`; equal to
        float32 rounding), so a GPU's loader workers only read and crop."""
        super().__init__()
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on {augment_on!r} is not one of {AUGMENT_ON}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size {batch_size} must be >= 1 and num_workers {num_workers} >= 0")
        self.source = source
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        # a batch of one breaks BatchNorm on the 1x1x1 maps of tiny clips; dropping only applies when a full batch exists
        self.drop_last = drop_last and len(source) > batch_size
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch_factor = prefetch_factor
        self.augment_on = augment_on
        self.train_set = ClipDataset(source, clip_length, crop_size, train=True, seed=seed, frame_step=frame_step,
                                     raw=augment_on == "device", **(augment or {}))
        self.device_augment = DeviceAugment(clip_length, crop_size)
        self.eval_set = ClipDataset(source, clip_length, crop_size, train=False, seed=seed, frame_step=frame_step)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Raw training batches (``augment_on="device"``) become clips here, on the device they were moved to."""
        if isinstance(batch, (tuple, list)) and len(batch) == 3:
            indices, flat, draws = batch
            return indices, self.device_augment(flat, draws)
        return batch

    def _loader(self, dataset: ClipDataset, sampler: Sampler | None, drop_last: bool, batch_size: int) -> DataLoader:
        extra: dict[str, Any] = {}
        if self.num_workers > 0:
            extra = dict(prefetch_factor=self.prefetch_factor, persistent_workers=True, worker_init_fn=_seed_worker)
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
            collate_fn=collate_raw if dataset.raw else collate_clips,
            pin_memory=self.pin_memory, drop_last=drop_last, **extra,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = EpochSampler(len(self.source), seed=self.seed, shuffle=True, rank=rank, world_size=world)
        return self._loader(self.train_set, sampler, self.drop_last, self.batch_size)

    def eval_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """Centre clips of every video in index order (single process; for exporting embeddings)."""
        return self._loader(self.eval_set, None, False, batch_size or self.batch_size)
