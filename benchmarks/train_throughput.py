"""Clips per second of the clip loader alone and of pretraining steps alone; does the loader keep up?

The loader reads in-memory uint8 videos (so storage reads are NOT included: the Zarr source adds its own cost).
Two placements of the augmentation are measured in the same run (``--augment-on``):
- ``loader``: the workers run all of it (temporal sampling, multi-scale crop + resize, grayscale, colour jitter, flip,
  mean subtraction) and collate float32 clips;
- ``device``: the workers sample and crop only and send uint8 crops (timed with the transfer to the device); the
  batch's resize, jitter, flip and normalisation (``DeviceAugment``) are timed on their own on the device, since on a
  GPU they overlap nothing else of the loader's (on a CPU-only machine the "device" is the cores the workers share,
  so there the two figures do not add up to a GPU's).
``--kornia`` also times kornia's batched ColorJitter + RandomGrayscale + flip on the same device batch, against
DeviceAugment's (kornia's hue is torchvision's HSV shift, ours a YIQ rotation: a speed comparison, not an equal one).
The training step runs forward, loss, backward, SGD and the memory-bank update on pre-made batches already on the
device, so it measures compute only.

    python benchmarks/train_throughput.py                      # tiny CPU settings
    python benchmarks/train_throughput.py --paper --workers 14  # ResNet-18, 16x112x112, bf16, batch 128, on a GPU
"""

import argparse
import time

import numpy as np
import torch

from idtprior.models import ClipDataModule, FunctionClipSource, MemoryBank, resnet3d
from idtprior.models.data import DeviceAugment
from idtprior.models.losses import draw_noise, ir_nce_loss, la_loss, nce_log_z


def make_source(n_videos: int, n_distinct: int, frames: int, height: int, width: int, seed: int) -> FunctionClipSource:
    """``n_videos`` synthetic videos backed by ``n_distinct`` random uint8 arrays (so a large N costs no memory)."""
    rng = np.random.default_rng(seed)
    videos = [rng.integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8) for _ in range(n_distinct)]
    return FunctionClipSource(
        lambda i, s, n: videos[i % n_distinct][s : s + n], lambda i: frames, n_videos
    )


def loader_throughput(source, args, augment_on: str = "loader") -> float:
    dm = ClipDataModule(source, args.clip_length, args.crop, args.batch, num_workers=args.workers, seed=0,
                        pin_memory=args.device == "cuda", augment_on=augment_on)
    it = iter(dm.train_dataloader())
    # Worker start-up and the batches the workers prefetched meanwhile (workers x prefetch_factor) are not steady
    # state: timing a few batches right after start-up drains that queue and overstates the loader (an H100 host once
    # read 2963 clips/s this way, against 567 in steady state).
    for _ in range(args.warmup + args.workers * dm.prefetch_factor):
        next(it)
    t0 = time.perf_counter()
    clips = 0
    for _ in range(args.steps):
        batch = [b.to(args.device, non_blocking=True) for b in next(it)]
        clips += len(batch[0])
    if args.device == "cuda":
        torch.cuda.synchronize()
    return clips / (time.perf_counter() - t0)


def augment_throughput(source, args) -> tuple[float, float | None]:
    """Clips/s of DeviceAugment alone on one raw batch already on the device, and of kornia's jitter (or None)."""
    dm = ClipDataModule(source, args.clip_length, args.crop, args.batch, seed=0, augment_on="device")
    batch = [b.to(args.device) for b in next(iter(dm.train_dataloader()))]
    aug = DeviceAugment(args.clip_length, args.crop)
    ours = _rate(lambda: aug(batch[1], batch[2]), args)
    if not args.kornia:
        return ours, None
    import kornia.augmentation as K  # optional: pip install kornia

    jitter = K.VideoSequential(
        K.ColorJitter(0.4, 0.4, 0.4, 0.4, order=(0, 1, 2, 3), p=1.0), K.RandomGrayscale(p=0.2),
        K.RandomHorizontalFlip(), data_format="BCTHW", same_on_frame=True)
    clips = aug(batch[1], batch[2]).contiguous()
    mean = clips.new_tensor([0.45, 0.42, 0.39])[None, :, None, None, None]
    return ours, _rate(lambda: jitter(clips) - mean, args)


def _rate(fn, args) -> float:
    for _ in range(args.warmup):
        fn()
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        fn()
    if args.device == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch / (time.perf_counter() - t0)


def train_throughput(n_videos: int, args) -> tuple[float, float]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = resnet3d(args.arch, 128, args.width).to(device)
    bank = MemoryBank(n_videos, 128, seed=0).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, max(2, n_videos // 40), (3, n_videos), generator=gen).to(device)
    clips = torch.randn(args.batch, 3, args.clip_length, args.crop, args.crop, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        idx = torch.randint(0, n_videos, (args.batch,), generator=gen).to(device)
        with autocast:
            v = net(clips)
        if args.objective == "ir":
            noise = draw_noise(args.batch, n_videos, args.negatives, gen).to(device)
            loss = ir_nce_loss(v, bank.bank, idx, noise, nce_log_z(v, bank.bank, noise, 0.07))
        else:
            loss = la_loss(v, bank.bank, idx, labels, k=args.negatives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bank.update(idx, v.detach().float())

    rate = _rate(step, args)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return rate, mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paper", action="store_true", help="ResNet-18, 16x112x112 from 128x171 frames, bf16, batch 128")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--clip-length", type=int, default=8)
    ap.add_argument("--crop", type=int, default=56)
    ap.add_argument("--frame-height", type=int, default=64)
    ap.add_argument("--frame-width", type=int, default=85)
    ap.add_argument("--frames", type=int, default=32, help="frames per synthetic video")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--n-videos", type=int, default=1024, help="bank rows (N)")
    ap.add_argument("--negatives", type=int, default=512)
    ap.add_argument("--objective", choices=("ir", "la"), default="ir")
    ap.add_argument("--precision", choices=("32", "bf16"), default="32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--loader-only", action="store_true", help="measure the loader only (e.g. --paper on a CPU)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    ap.add_argument("--augment-on", choices=("loader", "device", "both"), default="both",
                    help="where the loader's clips are transformed (both: each, in this run)")
    ap.add_argument("--kornia", action="store_true", help="also time kornia's batched colour jitter (if installed)")
    args = ap.parse_args()
    if args.paper:
        args.width, args.clip_length, args.crop, args.batch, args.precision = 1.0, 16, 112, 128, "bf16"
        args.frame_height, args.frame_width, args.negatives, args.n_videos = 128, 171, 4096, 235_000
        args.frames = max(args.frames, 64)
    torch.set_num_threads(args.threads)
    source = make_source(args.n_videos, 16, args.frames, args.frame_height, args.frame_width, seed=0)
    print(f"device={args.device} arch={args.arch} width={args.width} clip={args.clip_length}x{args.crop}x{args.crop} "
          f"frames={args.frame_height}x{args.frame_width} batch={args.batch} precision={args.precision} "
          f"objective={args.objective} N={args.n_videos} negatives={args.negatives} workers={args.workers} "
          f"threads={args.threads}")
    places = ("loader", "device") if args.augment_on == "both" else (args.augment_on,)
    rates = {}
    for place in places:
        rates[place] = loader_throughput(source, args, place)
        what = "workers transform clips" if place == "loader" else "workers send uint8 crops"
        print(f"loader, {what}: {rates[place]:8.1f} clips/s "
              f"({rates[place] / max(args.workers, 1):.1f} per worker)")
    if len(rates) == 2:
        print(f"workers sending crops / transforming = {rates['device'] / rates['loader']:.2f}")
    ours, other = augment_throughput(source, args)
    print(f"DeviceAugment alone on {args.device}: {ours:8.1f} clips/s"
          + ("" if other is None else f"; kornia's jitter+grayscale+flip {other:8.1f} clips/s, "
                                      f"DeviceAugment / kornia = {ours / other:.2f}"))
    if "device" in rates:  # the device's augmentation in series with the workers' crops
        rates["device"] = 1 / (1 / rates["device"] + 1 / ours)
    load = max(rates.values())
    if args.loader_only:
        return
    train, mem = train_throughput(args.n_videos, args)
    print(f"training: {train:8.1f} clips/s" + (f"  peak GPU memory {mem:.1f} GiB" if mem == mem else ""))
    ratio = load / train
    print(f"loader ({max(rates, key=rates.get)}) / training = {ratio:.2f}: the loader {'keeps up' if ratio >= 1 else 'is the bottleneck'}"
          + ("" if ratio >= 1 else f" (needs ~{int(np.ceil(max(args.workers, 1) / ratio))} workers)"))


if __name__ == "__main__":
    main()
