"""PyTorch references for channel attention (from the papers and the official code)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tF
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


class EfficientChannelAttention(nn.Module):
    """ECA as in the official ``eca_layer``: Conv1d(1, 1, k) over the pooled channel signal."""

    def __init__(self, channels: int, kernel_size: int, *, gate=torch.sigmoid):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).unsqueeze(1)  # (N, 1, C)
        y = self.conv(y).transpose(1, 2).unsqueeze(-1)  # (N, C, 1, 1)
        return x * self.gate(y)


class GatherExcite(nn.Module):
    """Gather-excite as timm's ``GatherExcite`` (Hu et al., NeurIPS 2018), flat names."""

    def __init__(self, channels: int, rd_channels: int | None, *, extent: int = 0,
                 extra_params: bool = False, feat_size: int | None = None,
                 use_mlp: bool = True):
        super().__init__()
        self.extent, self.extra_params, self.use_mlp = extent, extra_params, use_mlp
        self.n_gather = 0
        if extra_params:
            if extent == 0:
                self.conv1 = nn.Conv2d(channels, channels, feat_size, groups=channels, bias=False)
                self.norm1 = nn.BatchNorm2d(channels)
                self.n_gather = 1
            else:
                self.n_gather = int(math.log2(extent))
                for i in range(1, self.n_gather + 1):
                    setattr(self, f"conv{i}", nn.Conv2d(channels, channels, 3, stride=2,
                                                        padding=1, groups=channels, bias=False))
                    setattr(self, f"norm{i}", nn.BatchNorm2d(channels))
        if use_mlp:
            self.fc1 = nn.Conv2d(channels, rd_channels, 1)
            self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.extra_params:
            g = x
            for i in range(1, self.n_gather + 1):
                g = getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(g))
                if i != self.n_gather:
                    g = torch.relu(g)
        elif self.extent == 0:
            g = x.mean((2, 3), keepdim=True)
        else:
            k = 2 * self.extent - 1
            g = tF.avg_pool2d(x, kernel_size=k, stride=self.extent, padding=k // 2,
                              count_include_pad=False)
        if self.use_mlp:
            g = self.fc2(torch.relu(self.fc1(g)))
        if g.shape[-1] != 1 or g.shape[-2] != 1:
            g = tF.interpolate(g, size=size)
        return x * torch.sigmoid(g)


class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (GCNet's ``LayerNorm([C, 1, 1])`` on 1x1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GlobalContext(nn.Module):
    """GCNet ``ContextBlock`` (official) / timm ``GlobalContext``: attention pooling, add/scale."""

    def __init__(self, channels: int, rd_channels: int, *, fuse_add: bool = True,
                 fuse_scale: bool = False, eps: float = 1e-5, attn_bias: bool = False):
        super().__init__()
        self.fuse_add, self.fuse_scale = fuse_add, fuse_scale
        # The official conv_mask has a bias (timm's too); it cancels in the softmax.
        self.conv_attn = nn.Conv2d(channels, 1, 1, bias=attn_bias)
        for prefix, on in (("add", fuse_add), ("scale", fuse_scale)):
            if on:
                setattr(self, f"{prefix}_fc1", nn.Conv2d(channels, rd_channels, 1))
                setattr(self, f"{prefix}_norm", _LayerNorm2d(rd_channels, eps=eps))
                setattr(self, f"{prefix}_fc2", nn.Conv2d(rd_channels, channels, 1))

    def _transform(self, prefix: str, c: torch.Tensor) -> torch.Tensor:
        t = getattr(self, f"{prefix}_fc1")(c)
        t = torch.relu(getattr(self, f"{prefix}_norm")(t))
        return getattr(self, f"{prefix}_fc2")(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = tF.softmax(self.conv_attn(x).reshape(b, 1, h * w), dim=-1).unsqueeze(3)
        context = (x.reshape(b, c, h * w).unsqueeze(1) @ attn).view(b, c, 1, 1)
        out = x
        if self.fuse_scale:
            out = out * torch.sigmoid(self._transform("scale", context))
        if self.fuse_add:
            out = out + self._transform("add", context)
        return out


def covpool(x: torch.Tensor) -> torch.Tensor:
    """MPN-COV ``CovpoolLayer``: X I_hat X^T with I_hat = (I - 11^T / M) / M (official form)."""
    b, c, h, w = x.shape
    m = h * w
    xs = x.reshape(b, c, m)
    ones, eye = torch.ones(m, m, dtype=x.dtype), torch.eye(m, dtype=x.dtype)
    i_hat = (-1.0 / m / m) * ones + (1.0 / m) * eye
    return xs @ i_hat @ xs.transpose(1, 2)


def sqrtm_newton_schulz(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """iSQRT-COV ``Sqrtm`` forward (pre-norm by trace, coupled NS, post-compensation)."""
    b, c, _ = a.shape
    i3 = 3.0 * torch.eye(c, dtype=a.dtype).expand(b, c, c)
    norm = a.diagonal(dim1=1, dim2=2).sum(-1).view(b, 1, 1)
    y = a / norm
    if iterations < 2:
        yzy = 0.5 * y @ (i3 - y)
    else:
        zy = 0.5 * (i3 - y)
        y, z = y @ zy, zy
        for _ in range(1, iterations - 1):
            zy = 0.5 * (i3 - z @ y)
            y, z = y @ zy, zy @ z
        yzy = 0.5 * y @ (i3 - z @ y)
    return yzy * torch.sqrt(norm)


class SecondOrderChannel(nn.Module):
    """SOCA as in the official SAN code: covpool -> sqrtm (NS) -> row mean -> conv_du gate."""

    def __init__(self, channels: int, rd_channels: int, *, iterations: int = 5, act=nn.ReLU):
        super().__init__()
        self.iterations = iterations
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        root = sqrtm_newton_schulz(covpool(x), self.iterations)
        z = root.mean(1).view(b, c, 1, 1)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(z))))
