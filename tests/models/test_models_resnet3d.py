import pytest
import torch

from idtprior.models import resnet3d


def test_tiny_network_gives_unit_embeddings():
    torch.manual_seed(0)
    net = resnet3d("resnet18", embed_dim=16, width=0.125)
    out = net(torch.randn(3, 3, 4, 32, 32))
    assert out.shape == (3, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-6)
    assert net.features(torch.randn(2, 3, 4, 32, 32)).shape == (2, 64)


@pytest.mark.parametrize("arch, millions", [("resnet18", 33.2), ("resnet34", 63.5)])
def test_full_width_parameter_counts_match_hara_et_al(arch, millions):
    net = resnet3d(arch)
    n = sum(p.numel() for p in net.parameters()) / 1e6
    assert abs(n - millions) < 0.1  # 33.2M / 63.5M backbone + 512x128 head (Hara et al., Table 1)
    assert net.conv1.kernel_size == (7, 7, 7) and net.conv1.stride == (1, 2, 2)
    assert [len(s) for s in (net.layer1, net.layer2, net.layer3, net.layer4)] == (
        [2, 2, 2, 2] if arch == "resnet18" else [3, 4, 6, 3])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="arch 'resnet50'"):
        resnet3d("resnet50")
    with pytest.raises(ValueError, match=r"got shape \(2, 1, 4, 32, 32\)"):
        resnet3d(width=0.125)(torch.randn(2, 1, 4, 32, 32))
