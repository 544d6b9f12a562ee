"""Index-addressed memory bank of per-video embeddings (Wu et al. 2018), kept consistent across DDP ranks."""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def init_bank(n: int, dim: int, seed: int) -> torch.Tensor:
    """Random unit rows ``(n, dim)`` float32: uniform in +-1/sqrt(dim/3), then L2-normalised (as in Wu et al.)."""
    if n < 1 or dim < 1:
        raise ValueError(f"memory bank size ({n}, {dim}) must be positive")
    bound = 1.0 / math.sqrt(dim / 3)
    g = torch.Generator().manual_seed(seed)
    bank = torch.rand(n, dim, generator=g, dtype=torch.float32) * (2 * bound) - bound
    return F.normalize(bank, dim=1)


def _gather_across_ranks(indices: torch.Tensor, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' ``(indices (B,), embeddings (B, D))``, concatenated in rank order; batches may differ in size."""
    world = dist.get_world_size()
    size = torch.tensor([indices.numel()], device=indices.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    # all_gather needs equal shapes: pad to the longest batch, cut the padding off afterwards
    pad = longest - indices.numel()
    idx = F.pad(indices, (0, pad))
    emb = F.pad(embeddings, (0, 0, 0, pad))
    idx_all = [torch.empty_like(idx) for _ in range(world)]
    emb_all = [torch.empty_like(emb) for _ in range(world)]
    dist.all_gather(idx_all, idx)
    dist.all_gather(emb_all, emb)
    n = [int(s.item()) for s in sizes]
    return (
        torch.cat([t[:k] for t, k in zip(idx_all, n)]),
        torch.cat([t[:k] for t, k in zip(emb_all, n)]),
    )


class MemoryBank(nn.Module):
    """A ``(N, D)`` float32 buffer ``bank`` of unit rows, addressed by video index.

    The bank is a buffer, not a parameter: it is saved in ``state_dict`` (so in every Lightning checkpoint), never
    receives gradients, and is changed only by :meth:`update`, which the training loop calls after the optimiser step.
    """

    bank: torch.Tensor

    def __init__(self, n: int, dim: int = 128, momentum: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"memory bank momentum {momentum} must be in [0, 1]")
        self.momentum = momentum
        self.register_buffer("bank", init_bank(n, dim, seed))

    @property
    def size(self) -> int:
        return self.bank.shape[0]

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows ``(B, D)`` for ``indices (B,)``, detached."""
        return self.bank.index_select(0, indices).detach()

    @torch.no_grad()
    def update(self, indices: torch.Tensor, embeddings: torch.Tensor) -> None:
        """``bank[i] = l2n(m * bank[i] + (1 - m) * v)`` for ``indices (B,)`` and ``embeddings (B, D)``.

        Under ``torch.distributed`` every rank first gathers all ranks' indices and embeddings, so every rank applies
        the same update and the banks stay identical without a broadcast.
        """
        if indices.ndim != 1 or embeddings.ndim != 2 or embeddings.shape[0] != indices.shape[0]:
            raise ValueError(
                f"update needs indices (B,) and embeddings (B, D); got {tuple(indices.shape)} and "
                f"{tuple(embeddings.shape)}"
            )
        if embeddings.shape[1] != self.bank.shape[1]:
            raise ValueError(f"embedding dim {embeddings.shape[1]} differs from the bank dim {self.bank.shape[1]}")
        indices = indices.to(self.bank.device, torch.long)
        embeddings = embeddings.detach().to(self.bank.device, self.bank.dtype)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.size):
            raise ValueError(
                f"indices span [{int(indices.min())}, {int(indices.max())}], outside the bank of {self.size} rows"
            )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            indices, embeddings = _gather_across_ranks(indices, embeddings)
        mixed = self.momentum * self.bank.index_select(0, indices) + (1.0 - self.momentum) * embeddings
        self.bank.index_copy_(0, indices, F.normalize(mixed, dim=1))
