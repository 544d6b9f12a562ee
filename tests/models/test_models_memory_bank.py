import math

import numpy as np
import pytest
import torch

from idtprior.models import MemoryBank, init_bank


def test_init_is_seeded_unit_rows_from_the_uniform_box():
    a, b, c = init_bank(50, 128, seed=1), init_bank(50, 128, seed=1), init_bank(50, 128, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.norm(dim=1), torch.ones(50), atol=1e-6)
    # before normalisation the rows are uniform in +-1/sqrt(D/3): reproduce them and compare directions
    g = torch.Generator().manual_seed(1)
    bound = 1 / math.sqrt(128 / 3)
    raw = torch.rand(50, 128, generator=g) * 2 * bound - bound
    assert raw.abs().max() <= bound
    assert torch.allclose(a, raw / raw.norm(dim=1, keepdim=True), atol=1e-7)


def test_update_is_normalised_momentum_average_without_gradients():
    bank = MemoryBank(10, 4, momentum=0.5, seed=0)
    old = bank.bank.clone().numpy()
    v = torch.nn.functional.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    idx = torch.tensor([2, 7, 9])
    bank.update(idx, v * 1.0)
    want = old.copy()
    mixed = 0.5 * old[[2, 7, 9]] + 0.5 * v.detach().numpy()
    want[[2, 7, 9]] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    np.testing.assert_allclose(bank.bank.numpy(), want, atol=1e-6)
    assert not bank.bank.requires_grad and "bank" in bank.state_dict()
    assert not list(bank.parameters())


def test_update_rejects_out_of_range_indices():
    bank = MemoryBank(10, 4)
    with pytest.raises(ValueError, match=r"indices span \[3, 10\], outside the bank of 10 rows"):
        bank.update(torch.tensor([3, 10]), torch.randn(2, 4))
    with pytest.raises(ValueError, match="embedding dim 5"):
        bank.update(torch.tensor([3]), torch.randn(1, 5))


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        bank = MemoryBank(12, 4, seed=0)
        g = torch.Generator().manual_seed(0)
        v = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
        # rank 0 updates rows 0..2, rank 1 rows 3..4: uneven batches exercise the padding
        idx, emb = (torch.arange(3), v[:3]) if rank == 0 else (torch.arange(3, 5), v[3:])
        bank.update(idx, emb)
        torch.save(bank.bank, f"{out}/bank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes re-import torch and Lightning: ~25 s on the shared CPU
def test_ddp_ranks_gather_before_updating(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    b0, b1 = (torch.load(tmp_path / f"bank{r}.pt") for r in range(2))
    single = MemoryBank(12, 4, seed=0)
    v = torch.nn.functional.normalize(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    single.update(torch.arange(5), v)
    assert torch.equal(b0, b1)
    torch.testing.assert_close(b0, single.bank, rtol=0, atol=1e-7)
