import pytest
import torch

from idtprior.models import MemoryBank, draw_noise, ir_nce_loss, la_loss, nce_log_z, resnet3d
from idtprior.models.data import ClipDataset


@pytest.mark.parametrize("objective", ["ir", "la"])
def test_loss_falls_over_20_steps(objective, squares):
    source, labels = squares
    torch.manual_seed(0)
    net = resnet3d(width=0.125, embed_dim=16)
    bank = MemoryBank(len(source), 16, momentum=0.5, seed=0)
    ds = ClipDataset(source, clip_length=4, crop_size=32, seed=0)
    indices = torch.arange(8)
    clips = torch.stack([ds[(i, 0)][1] for i in range(8)])  # one fixed batch
    clusters = torch.as_tensor(labels)[None]  # motion classes as one clustering
    opt = torch.optim.SGD(net.parameters(), lr=0.03, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        v = net(clips)
        if objective == "ir":
            noise = draw_noise(8, len(source), 8, gen)
            loss = ir_nce_loss(v, bank.bank, indices, noise, nce_log_z(v, bank.bank, noise, 0.07))
        else:
            loss = la_loss(v, bank.bank, indices, clusters, k=8)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bank.update(indices, v.detach())
        losses.append(float(loss.detach()))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, losses
