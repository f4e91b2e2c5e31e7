"""PyTorch reference for ASPP (DeepLabv3), written from the paper and torchvision's ``ASPP``.

NCHW; submodule names are the JAX parameter names (``b0``.. ``project``, each ``conv``+``bn``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import nn


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int = 1, dilation: int = 1,
                 act: bool = True):
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=pad, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x):
        y = self.bn(self.conv(x))
        return TF.relu(y) if self.act else y


class ASPP(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None,
                 atrous_rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        co = out_channels or channels
        self.n = len(atrous_rates) + 1
        self.b0 = ConvBNAct(channels, co, 1)
        for i, r in enumerate(atrous_rates):
            setattr(self, f"b{i + 1}", ConvBNAct(channels, co, 3, dilation=r))
        self.pool = ConvBNAct(channels, co, 1)
        self.project = ConvBNAct(co * (self.n + 1), co, 1)

    def forward(self, x):
        feats = [getattr(self, f"b{i}")(x) for i in range(self.n)]
        p = self.pool(TF.adaptive_avg_pool2d(x, 1))
        feats.append(TF.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.project(torch.cat(feats, dim=1))
