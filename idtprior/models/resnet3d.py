"""3D ResNet-18/34 of Hara, Kataoka, Satoh (CVPR 2018) with a 128-d L2-normalised embedding head.

Input clips are ``(B, 3, T, H, W)`` float; the stem is a 7x7x7 convolution with stride (1, 2, 2) and a 3x3x3 max-pool
with stride 2, followed by four stages of BasicBlocks (widths 64, 128, 256, 512; stride 2 from the second stage on)
with projection shortcuts (type B) wherever the shape changes, global average pooling and a linear embedding.
``width`` scales every stage width (0.125 gives 8..64 channels) so the same code trains on a CPU in seconds.
"""

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS: dict[str, tuple[int, int, int, int]] = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class BasicBlock3d(nn.Module):
    """Two 3x3x3 convolutions with a residual connection; a 1x1x1 projection when stride or width change."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # shortcut B of Hara et al.: a learned projection only where the shape changes
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm3d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNet3d(nn.Module):
    """3D ResNet encoder; ``forward`` returns L2-normalised embeddings ``(B, embed_dim)``.

    Args:
        arch: ``"resnet18"`` (blocks 2,2,2,2) or ``"resnet34"`` (blocks 3,4,6,3).
        embed_dim: size of the linear embedding head (128 in the paper).
        width: multiplier of the stage widths 64, 128, 256, 512 (1.0 in the paper).
    """

    def __init__(self, arch: str = "resnet18", embed_dim: int = 128, width: float = 1.0) -> None:
        super().__init__()
        if arch not in BLOCKS:
            raise ValueError(f"arch {arch!r} is not one of {sorted(BLOCKS)}")
        if not width > 0:
            raise ValueError(f"width {width} must be positive")
        if embed_dim < 1:
            raise ValueError(f"embed_dim {embed_dim} must be at least 1")
        self.arch, self.embed_dim, self.width = arch, embed_dim, width
        widths = [max(1, int(round(64 * width))) * 2**i for i in range(4)]
        self.conv1 = nn.Conv3d(3, widths[0], 7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(widths[0])
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        stages, in_planes = [], widths[0]
        for i, (n_blocks, planes) in enumerate(zip(BLOCKS[arch], widths)):
            blocks = []
            for b in range(n_blocks):
                blocks.append(BasicBlock3d(in_planes, planes, stride=2 if (i > 0 and b == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = widths[3]
        self.fc = nn.Linear(widths[3], embed_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, 3, T, H, W) -> (B, 512 * width)``, before the embedding head."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"clips must be (B, 3, T, H, W), got shape {tuple(x.shape)}")
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool3d(x, 1), 1)  # (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, 3, T, H, W) -> (B, embed_dim)``, unit L2 norm."""
        return F.normalize(self.fc(self.features(x)), dim=1)  # (B, 128)


def resnet3d(arch: str = "resnet18", embed_dim: int = 128, width: float = 1.0) -> ResNet3d:
    """Build a :class:`ResNet3d` (``arch`` in ``{"resnet18", "resnet34"}``)."""
    return ResNet3d(arch=arch, embed_dim=embed_dim, width=width)
