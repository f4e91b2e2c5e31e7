"""PyTorch references for PFANet (Zhao and Wu, CVPR 2019), NCHW.

Written from the paper and the official Keras code (github.com/CaitinZhao/
cvpr2019_Pyramid-Feature-Attention-Network-for-Saliency-detection): CFE = 1x1 conv + 3x3 convs
with dilation 3, 5, 7 (no bias), concat, BN, ReLU; channel-wise attention = GAP, dense + ReLU,
dense + sigmoid, multiply; spatial attention = (1xk conv, BN, ReLU, kx1 conv, BN, ReLU) +
(kx1 ..., 1xk ...), sigmoid; head: C345 branch 1x1 conv + BN + ReLU, upsampled; C12 branch
3x3 conv + BN + ReLU, multiplied by the spatial attention of the C345 branch; 3x3 conv to one
channel, sigmoid. Submodule names equal our parameter names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as tF
from torch import nn


class ContextAwarePyramid(nn.Module):
    """CPFE (+ channel-wise attention as 1x1 convs on the pooled map, same as dense layers)."""

    def __init__(self, channels: int, out_channels: int | None = None, *,
                 dilations=(3, 5, 7), channel_attention: bool = True, rd_channels: int = 8):
        super().__init__()
        out = out_channels or channels
        branch = out // (1 + len(dilations))
        self.n = 1 + len(dilations)
        self.conv0 = nn.Conv2d(channels, branch, 1, bias=False)
        for i, d in enumerate(dilations, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(channels, branch, 3, padding=d, dilation=d,
                                                bias=False))
        self.bn = nn.BatchNorm2d(out)
        self.channel_attention = channel_attention
        if channel_attention:
            self.ca_fc1 = nn.Conv2d(out, rd_channels, 1)
            self.ca_fc2 = nn.Conv2d(rd_channels, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([getattr(self, f"conv{i}")(x) for i in range(self.n)], 1)
        y = torch.relu(self.bn(y))
        if not self.channel_attention:
            return y
        a = torch.sigmoid(self.ca_fc2(torch.relu(self.ca_fc1(y.mean((2, 3), keepdim=True)))))
        return y * a


class PyramidSpatialAttention(nn.Module):
    """Two separable-kernel branches, each conv followed by BN + ReLU, summed, sigmoid."""

    def __init__(self, channels: int, *, kernel_size: int = 9, mid_channels: int | None = None):
        super().__init__()
        k, p = kernel_size, kernel_size // 2
        mid = mid_channels or max(channels // 2, 1)
        self.b1_conv1 = nn.Conv2d(channels, mid, (1, k), padding=(0, p))
        self.b1_bn1 = nn.BatchNorm2d(mid)
        self.b1_conv2 = nn.Conv2d(mid, 1, (k, 1), padding=(p, 0))
        self.b1_bn2 = nn.BatchNorm2d(1)
        self.b2_conv1 = nn.Conv2d(channels, mid, (k, 1), padding=(p, 0))
        self.b2_bn1 = nn.BatchNorm2d(mid)
        self.b2_conv2 = nn.Conv2d(mid, 1, (1, k), padding=(0, p))
        self.b2_bn2 = nn.BatchNorm2d(1)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.b1_bn1(self.b1_conv1(x)))
        a = torch.relu(self.b1_bn2(self.b1_conv2(a)))
        b = torch.relu(self.b2_bn1(self.b2_conv1(x)))
        b = torch.relu(self.b2_bn2(self.b2_conv2(b)))
        return torch.sigmoid(a + b)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return x * self.attention_map(x if guide is None else guide)


class PyramidFeatureAttention(nn.Module):
    """The PFANet head on one low-level and one high-level feature map."""

    def __init__(self, low_channels: int, high_channels: int, *, features: int = 32,
                 mid_channels: int = 64, dilations=(3, 5, 7), kernel_size: int = 9,
                 rd_channels: int = 8):
        super().__init__()
        pyramid = features * (1 + len(dilations))
        self.cpfe = ContextAwarePyramid(high_channels, pyramid, dilations=dilations,
                                        rd_channels=rd_channels)
        self.high_conv = nn.Conv2d(pyramid, mid_channels, 1)
        self.high_bn = nn.BatchNorm2d(mid_channels)
        self.low_conv = nn.Conv2d(low_channels, mid_channels, 3, padding=1)
        self.low_bn = nn.BatchNorm2d(mid_channels)
        self.sa = PyramidSpatialAttention(mid_channels, kernel_size=kernel_size)
        self.head_conv = nn.Conv2d(2 * mid_channels, 1, 3, padding=1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.high_bn(self.high_conv(self.cpfe(high))))
        if h.shape[2:] != low.shape[2:]:
            h = tF.interpolate(h, size=low.shape[2:], mode="bilinear", align_corners=False)
        lo = torch.relu(self.low_bn(self.low_conv(low)))
        lo = lo * self.sa.attention_map(h)
        return torch.sigmoid(self.head_conv(torch.cat([lo, h], 1)))
