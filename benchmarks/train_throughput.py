"""Clips per second of the clip loader alone and of pretraining steps alone; does the loader keep up?

The loader reads in-memory uint8 videos (so storage reads are NOT included: the Zarr source adds its own cost) and
runs the full augmentation (temporal sampling, multi-scale crop + resize, grayscale, colour jitter, flip, mean
subtraction) and collation in ``--workers`` processes. The training step runs forward, loss, backward, SGD and the
memory-bank update on pre-made batches already on the device, so it measures compute only.

    python benchmarks/train_throughput.py                      # tiny CPU settings
    python benchmarks/train_throughput.py --paper --workers 14  # ResNet-18, 16x112x112, bf16, batch 128, on a GPU
"""

import argparse
import time

import numpy as np
import torch

from idtprior.models import ClipDataModule, FunctionClipSource, MemoryBank, resnet3d
from idtprior.models.losses import draw_noise, ir_nce_loss, la_loss, nce_log_z


def make_source(n_videos: int, n_distinct: int, frames: int, height: int, width: int, seed: int) -> FunctionClipSource:
    """``n_videos`` synthetic videos backed by ``n_distinct`` random uint8 arrays (so a large N costs no memory)."""
    rng = np.random.default_rng(seed)
    videos = [rng.integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8) for _ in range(n_distinct)]
    return FunctionClipSource(
        lambda i, s, n: videos[i % n_distinct][s : s + n], lambda i: frames, n_videos
    )


def loader_throughput(source, args) -> float:
    dm = ClipDataModule(source, args.clip_length, args.crop, args.batch, num_workers=args.workers, seed=0,
                        pin_memory=args.device == "cuda")
    it = iter(dm.train_dataloader())
    # Worker start-up and the batches the workers prefetched meanwhile (workers x prefetch_factor) are not steady
    # state: timing a few batches right after start-up drains that queue and overstates the loader (an H100 host once
    # read 2963 clips/s this way, against 567 in steady state).
    for _ in range(args.warmup + args.workers * dm.prefetch_factor):
        next(it)
    t0 = time.perf_counter()
    clips = 0
    for _ in range(args.steps):
        idx, batch = next(it)
        if args.device == "cuda":
            batch = batch.to("cuda", non_blocking=True)
        clips += batch.shape[0]
    if args.device == "cuda":
        torch.cuda.synchronize()
    return clips / (time.perf_counter() - t0)


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

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = args.steps * args.batch / (time.perf_counter() - t0)
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
    load = loader_throughput(source, args)
    print(f"loader:   {load:8.1f} clips/s  ({load / max(args.workers, 1):.1f} per worker)")
    if args.loader_only:
        return
    train, mem = train_throughput(args.n_videos, args)
    print(f"training: {train:8.1f} clips/s" + (f"  peak GPU memory {mem:.1f} GiB" if mem == mem else ""))
    ratio = load / train
    print(f"loader / training = {ratio:.2f}: the loader {'keeps up' if ratio >= 1 else 'is the bottleneck'}"
          + ("" if ratio >= 1 else f" (needs ~{int(np.ceil(max(args.workers, 1) / ratio))} workers)"))


if __name__ == "__main__":
    main()
