"""PyTorch reference ResNet (torchvision's layout) with pluggable attention, NCHW.

Same block wiring as ``torchvision.models.resnet`` (stride on the bottleneck's 3x3 conv,
1x1 conv + BN shortcut), attention after the block's last BN before the residual add as in
timm, SK / split-attention 3x3 convs as in timm's SK-ResNet and ResNeSt. Submodule names equal
our parameter names (``layer{s}_{b}`` instead of torchvision's ``layer{s}.{b}``,
``downsample_conv``/``downsample_bn`` instead of ``downsample.0``/``.1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from attention_jax.torch_reference import rd, selective


def _spatial(kind: str, cin: int, cout: int, stride: int, groups: int) -> nn.Module:
    if kind == "sk":
        return selective.SelectiveKernel(cin, cout, stride=stride, groups=groups,
                                         rd_channels=max(rd(cout, 1 / 16), 32))
    if kind == "splat":
        return selective.SplitAttention(cin, cout, stride=stride, groups=groups, radix=2,
                                        rd_channels=max(rd(cin * 2, 0.25), 32))
    return nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False)


class ResNetBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, bottleneck: bool, *, groups: int = 1,
                 base_width: int = 64, spatial_conv: str = "conv",
                 attn: Callable[[int], nn.Module] | None = None):
        super().__init__()
        self.bottleneck, self.plain = bottleneck, spatial_conv == "conv"
        if bottleneck:
            width, out = int(planes * base_width / 64) * groups, planes * 4
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2 = _spatial(spatial_conv, width, width, stride, groups)
            if self.plain:
                self.bn2 = nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        else:
            out = planes
            self.conv1 = _spatial(spatial_conv, cin, planes, stride, 1)
            if self.plain:
                self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out)
        self.attn = attn(out) if attn is not None else None
        self.has_down = stride != 1 or cin != out
        if self.has_down:
            self.downsample_conv = nn.Conv2d(cin, out, 1, stride, bias=False)
            self.downsample_bn = nn.BatchNorm2d(out)
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bottleneck:
            h = torch.relu(self.bn1(self.conv1(x)))
            h = self.conv2(h)
            if self.plain:
                h = torch.relu(self.bn2(h))
            h = self.bn3(self.conv3(h))
        else:
            h = self.conv1(x)
            if self.plain:
                h = torch.relu(self.bn1(h))
            h = self.bn2(self.conv2(h))
        if self.attn is not None:
            h = self.attn(h)
        s = self.downsample_bn(self.downsample_conv(x)) if self.has_down else x
        return torch.relu(h + s)


class ResNet(nn.Module):
    def __init__(self, *, layers: Sequence[int], block: str = "basic",
                 widths: Sequence[int] = (64, 128, 256, 512), num_classes: int | None = 1000,
                 in_channels: int = 3, stem_width: int = 64, small_stem: bool = False,
                 groups: int = 1, base_width: int = 64, spatial_conv: str = "conv",
                 attn: Callable[[int], nn.Module] | None = None):
        super().__init__()
        k, s = (3, 1) if small_stem else (7, 2)
        self.small_stem = small_stem
        self.conv1 = nn.Conv2d(in_channels, stem_width, k, s, k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.names = []
        cin = stem_width
        for si, (n, planes) in enumerate(zip(layers, widths, strict=True), start=1):
            for b in range(n):
                blk = ResNetBlock(cin, planes, 2 if (si > 1 and b == 0) else 1,
                                  block == "bottleneck", groups=groups, base_width=base_width,
                                  spatial_conv=spatial_conv, attn=attn)
                setattr(self, f"layer{si}_{b}", blk)
                self.names.append(f"layer{si}_{b}")
                cin = blk.out
        self.fc = nn.Linear(cin, num_classes) if num_classes is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        if not self.small_stem:
            h = nn.functional.max_pool2d(h, 3, 2, 1)
        for name in self.names:
            h = getattr(self, name)(h)
        h = h.mean((2, 3))
        return h if self.fc is None else self.fc(h)
