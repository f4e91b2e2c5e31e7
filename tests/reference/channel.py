"""PyTorch references for channel attention (from the papers and the official code)."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """SE block as in the official SENet / timm ``SEModule`` (1x1 convs on the pooled map)."""

    def __init__(self, channels: int, rd_channels: int, *, add_maxpool: bool = False,
                 bias: bool = True, act=nn.ReLU, gate=torch.sigmoid):
        super().__init__()
        self.add_maxpool = add_maxpool
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=bias)
        self.act = act()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=bias)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        if self.add_maxpool:
            s = 0.5 * s + 0.5 * x.amax((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))
