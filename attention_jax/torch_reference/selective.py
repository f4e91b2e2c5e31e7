"""PyTorch references for selective attention: SK-Net and ResNeSt split attention (NCHW).

Written from the papers and the official code: SKNet's SKConv (Li et al. 2019; timm's
``SelectiveKernel`` layout, one 1x1 ``fc_select`` producing all branches' logits) and ResNeSt's
``SplAtConv2d`` / ``rSoftMax`` (Zhang et al. 2020, github.com/zhanghang1989/ResNeSt).
Submodule names equal our parameter names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as tF
from torch import nn


class SelectiveKernel(nn.Module):
    """SKConv: M dilated 3x3 branches (BN+ReLU), fuse by sum, GAP, fc+BN+ReLU, softmax select."""

    def __init__(self, channels: int, out_channels: int | None = None, *, num_paths: int = 2,
                 groups: int = 1, stride: int = 1, rd_channels: int = 32,
                 split_input: bool = False):
        super().__init__()
        out = out_channels or channels
        self.num_paths, self.split_input = num_paths, split_input
        cin = channels // num_paths if split_input else channels  # timm's split_input
        for m in range(num_paths):
            d = m + 1  # a 3x3 kernel with dilation d covers a (2d + 1)^2 window
            setattr(self, f"conv{m}", nn.Conv2d(cin, out, 3, stride, padding=d, dilation=d,
                                                groups=groups, bias=False))
            setattr(self, f"bn{m}", nn.BatchNorm2d(out))
        self.fc_reduce = nn.Conv2d(out, rd_channels, 1, bias=False)
        self.fc_bn = nn.BatchNorm2d(rd_channels)
        self.fc_select = nn.Conv2d(rd_channels, out * num_paths, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = (torch.chunk(x, self.num_paths, 1) if self.split_input
              else [x] * self.num_paths)
        feats = [torch.relu(getattr(self, f"bn{m}")(getattr(self, f"conv{m}")(xs[m])))
                 for m in range(self.num_paths)]
        u = torch.stack(feats, 1)  # B, M, C, H, W
        s = u.sum(1).mean((2, 3), keepdim=True)
        z = torch.relu(self.fc_bn(self.fc_reduce(s)))
        b, c = s.shape[:2]
        a = self.fc_select(z).view(b, self.num_paths, c, 1, 1).softmax(1)
        return (u * a).sum(1)


class RSoftMax(nn.Module):
    """ResNeSt's rSoftMax: softmax over radix within each cardinal group; sigmoid for radix 1."""

    def __init__(self, radix: int, cardinality: int):
        super().__init__()
        self.radix, self.cardinality = radix, cardinality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.size(0)
        if self.radix > 1:
            x = x.view(batch, self.cardinality, self.radix, -1).transpose(1, 2)
            x = tF.softmax(x, dim=1)
            return x.reshape(batch, -1)
        return torch.sigmoid(x)


class SplitAttention(nn.Module):
    """SplAtConv2d with BatchNorm (official ResNeSt), no DropBlock, no rectified conv."""

    def __init__(self, channels: int, out_channels: int | None = None, *, kernel_size: int = 3,
                 stride: int = 1, dilation: int = 1, groups: int = 1, radix: int = 2,
                 rd_channels: int = 32, bias: bool = False):
        super().__init__()
        out = out_channels or channels
        self.radix, self.cardinality, self.out = radix, groups, out
        pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(channels, out * radix, kernel_size, stride, pad, dilation,
                              groups=groups * radix, bias=bias)
        self.bn0 = nn.BatchNorm2d(out * radix)
        self.fc1 = nn.Conv2d(out, rd_channels, 1, groups=groups)
        self.bn1 = nn.BatchNorm2d(rd_channels)
        self.fc2 = nn.Conv2d(rd_channels, out * radix, 1, groups=groups)
        self.rsoftmax = RSoftMax(radix, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.conv(x)))
        batch, rchannel = x.shape[:2]
        if self.radix > 1:
            splited = torch.split(x, rchannel // self.radix, dim=1)
            gap = sum(splited)
        else:
            gap = x
        gap = tF.adaptive_avg_pool2d(gap, 1)
        gap = torch.relu(self.bn1(self.fc1(gap)))
        atten = self.rsoftmax(self.fc2(gap)).view(batch, -1, 1, 1)
        if self.radix > 1:
            attens = torch.split(atten, rchannel // self.radix, dim=1)
            return sum(att * split for att, split in zip(attens, splited, strict=True))
        return atten * x
