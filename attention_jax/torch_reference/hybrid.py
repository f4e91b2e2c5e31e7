"""PyTorch references for hybrid attention: CBAM, BAM, coordinate attention (official code)."""

from __future__ import annotations

import torch
import torch.nn.functional as tF
from torch import nn


class ChannelGate(nn.Module):
    """CBAM channel gate (official ``ChannelGate``, avg + max through one MLP), 1x1 convs."""

    def __init__(self, channels: int, rd_channels: int, *, bias: bool = False):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=bias)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def mlp(s):
            return self.fc2(torch.relu(self.fc1(s)))

        att = mlp(tF.adaptive_avg_pool2d(x, 1)) + mlp(tF.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(att)


class SpatialGate(nn.Module):
    """CBAM spatial gate (official ``SpatialGate``: ``BasicConv`` conv + BN, no ReLU, sigmoid).

    The pooled pair is [mean; max] (paper and timm order; the official ``ChannelPool`` stacks
    max first, which only permutes the conv's two input channels).
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """CBAM: channel gate then spatial gate."""

    def __init__(self, channels: int, rd_channels: int, *, bias: bool = False,
                 kernel_size: int = 7):
        super().__init__()
        self.channel = ChannelGate(channels, rd_channels, bias=bias)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class BAM(nn.Module):
    """BAM as the official ``BAM`` (Jongchan/attention-module), flat submodule names.

    ``combine="official"`` is the released forward ``1 + sigmoid(Mc * Ms)``; ``"paper"`` is
    Eq. 1-2, ``1 + sigmoid(Mc + Ms)``. The channel pool is the official
    ``avg_pool2d(x, H, stride=H)`` (global for square maps).
    """

    def __init__(self, channels: int, rd_channels: int, *, dilation: int = 4,
                 combine: str = "paper"):
        super().__init__()
        r, d = rd_channels, dilation
        self.combine = combine
        self.fc1 = nn.Linear(channels, r)
        self.bn1 = nn.BatchNorm1d(r)
        self.fc2 = nn.Linear(r, channels)
        self.conv_reduce = nn.Conv2d(channels, r, 1)
        self.bn_reduce = nn.BatchNorm2d(r)
        self.conv_di_0 = nn.Conv2d(r, r, 3, padding=d, dilation=d)
        self.bn_di_0 = nn.BatchNorm2d(r)
        self.conv_di_1 = nn.Conv2d(r, r, 3, padding=d, dilation=d)
        self.bn_di_1 = nn.BatchNorm2d(r)
        self.conv_final = nn.Conv2d(r, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = tF.avg_pool2d(x, x.size(2), stride=x.size(2)).flatten(1)
        mc = self.fc2(torch.relu(self.bn1(self.fc1(pooled))))[:, :, None, None].expand_as(x)
        s = torch.relu(self.bn_reduce(self.conv_reduce(x)))
        s = torch.relu(self.bn_di_0(self.conv_di_0(s)))
        s = torch.relu(self.bn_di_1(self.conv_di_1(s)))
        ms = self.conv_final(s).expand_as(x)
        att = 1 + torch.sigmoid(mc * ms if self.combine == "official" else mc + ms)
        return att * x


class _HSwish(nn.Module):
    """The official ``h_swish``: x * relu6(x + 3) / 6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * tF.relu6(x + 3) / 6


class CoordinateAttention(nn.Module):
    """Coordinate attention as the official ``CoordAtt`` (Hou et al., CVPR 2021)."""

    def __init__(self, channels: int, rd_channels: int, *, act: str = "relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, rd_channels, 1)
        self.bn1 = nn.BatchNorm2d(rd_channels)
        self.act = _HSwish() if act == "hard_swish" else nn.ReLU()
        self.conv_h = nn.Conv2d(rd_channels, channels, 1)
        self.conv_w = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x_h = tF.adaptive_avg_pool2d(x, (None, 1))
        x_w = tF.adaptive_avg_pool2d(x, (1, None)).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(y_h).sigmoid()
        a_w = self.conv_w(y_w.permute(0, 1, 3, 2)).sigmoid()
        return x * a_w * a_h
