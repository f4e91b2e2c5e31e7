"""PyTorch references for self-attention over pixels (written from the papers and official code).

NCHW. Submodule names are the JAX parameter names. Non-local follows the official
facebookresearch/video-nonlocal-net and the AlexHex7/mmcv PyTorch ports; PAM/CAM/DANetHead the
official junfu1115/DANet; criss-cross the official speedinghzl/CCNet pure-PyTorch version (with
its -inf on the column's self position); multi-head self-attention timm's ``Attention`` with a
Swin relative-position table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import nn

from attention_jax.torch_reference.context import ConvBNAct


class NonLocal(nn.Module):
    def __init__(self, channels: int, inter_channels: int, *, mode: str = "embedded_gaussian",
                 use_scale: bool = True, sub_sample: bool = False, use_bn: bool = True):
        super().__init__()
        self.mode, self.use_scale, self.use_bn = mode, use_scale, use_bn
        self.sub_sample = sub_sample
        self.inter = inter_channels
        self.theta = nn.Conv2d(channels, inter_channels, 1)
        self.phi = nn.Conv2d(channels, inter_channels, 1)
        self.g = nn.Conv2d(channels, inter_channels, 1)
        if mode == "concatenation":
            self.concat_project = nn.Conv2d(2 * inter_channels, 1, 1, bias=False)
        self.out_proj = nn.Conv2d(inter_channels, channels, 1)
        if use_bn:
            self.out_bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        n = x.shape[0]
        g_x, phi_x = self.g(x), self.phi(x)
        if self.sub_sample:
            g_x, phi_x = TF.max_pool2d(g_x, 2), TF.max_pool2d(phi_x, 2)
        g_x = g_x.view(n, self.inter, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(n, self.inter, -1).permute(0, 2, 1)  # (N, T, Ci)
        if self.mode == "embedded_gaussian":
            f = torch.matmul(theta_x, phi_x.view(n, self.inter, -1))
            if self.use_scale:
                f = f / self.inter ** 0.5
            f = f.softmax(dim=-1)
        elif self.mode == "dot_product":
            f = torch.matmul(theta_x, phi_x.view(n, self.inter, -1))
            f = f / f.shape[-1]
        else:  # concatenation, as AlexHex7's: repeat, concat, 1x1 conv, ReLU
            t = self.theta(x).view(n, self.inter, -1, 1)
            p = phi_x.view(n, self.inter, 1, -1)
            h, w = t.size(2), p.size(3)
            cat = torch.cat([t.repeat(1, 1, 1, w), p.repeat(1, 1, h, 1)], dim=1)
            f = TF.relu(self.concat_project(cat)).view(n, h, w)
            f = f / w
        y = torch.matmul(f, g_x).permute(0, 2, 1).contiguous()
        y = y.view(n, self.inter, *x.shape[2:])
        z = self.out_proj(y)
        if self.use_bn:
            z = self.out_bn(z)
        return z + x


class PositionAttention(nn.Module):
    """Official ``PAM_Module``."""

    def __init__(self, channels: int, qk_channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, qk_channels, 1)
        self.key = nn.Conv2d(channels, qk_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.query(x).view(b, -1, h * w).permute(0, 2, 1)
        k = self.key(x).view(b, -1, h * w)
        attention = torch.bmm(q, k).softmax(dim=-1)
        v = self.value(x).view(b, -1, h * w)
        out = torch.bmm(v, attention.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * out + x


class ChannelSelfAttention(nn.Module):
    """Official ``CAM_Module`` (max-minus-energy)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        q = x.view(b, c, -1)
        energy = torch.bmm(q, q.permute(0, 2, 1))
        energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        attention = energy_new.softmax(dim=-1)
        out = torch.bmm(attention, q).view(b, c, h, w)
        return self.gamma * out + x


class DualAttentionHead(nn.Module):
    """Official ``DANetHead`` without the auxiliary conv6/conv7 outputs and dropout."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        ci = channels // 4
        self.conv5a = ConvBNAct(channels, ci, 3)
        self.conv5c = ConvBNAct(channels, ci, 3)
        self.sa = PositionAttention(ci, max(1, ci // 8))
        self.sc = ChannelSelfAttention(ci)
        self.conv51 = ConvBNAct(ci, ci, 3)
        self.conv52 = ConvBNAct(ci, ci, 3)
        self.conv8 = nn.Conv2d(ci, out_channels or channels, 1)

    def forward(self, x):
        sa_conv = self.conv51(self.sa(self.conv5a(x)))
        sc_conv = self.conv52(self.sc(self.conv5c(x)))
        return self.conv8(sa_conv + sc_conv)


def _inf_diag(b: int, h: int, w: int) -> torch.Tensor:
    # The official INF(): -inf on the diagonal (the pixel itself in its column), 0 elsewhere.
    return -torch.diag(torch.tensor(float("inf")).repeat(h), 0).unsqueeze(0).repeat(b * w, 1, 1)


class CrissCrossAttention(nn.Module):
    """Official CCNet ``CrissCrossAttention`` applied ``recurrence`` times (RCCA loop)."""

    def __init__(self, channels: int, qk_channels: int, recurrence: int = 2):
        super().__init__()
        self.recurrence = recurrence
        self.query = nn.Conv2d(channels, qk_channels, 1)
        self.key = nn.Conv2d(channels, qk_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def once(self, x):
        b, _, h, w = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)
        q_h = q.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h).permute(0, 2, 1)
        q_w = q.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w).permute(0, 2, 1)
        k_h = k.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
        k_w = k.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
        v_h = v.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
        v_w = v.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
        e_h = (torch.bmm(q_h, k_h) + _inf_diag(b, h, w)).view(b, w, h, h).permute(0, 2, 1, 3)
        e_w = torch.bmm(q_w, k_w).view(b, h, w, w)
        att = torch.cat([e_h, e_w], 3).softmax(dim=3)
        a_h = att[:, :, :, 0:h].permute(0, 2, 1, 3).contiguous().view(b * w, h, h)
        a_w = att[:, :, :, h:h + w].contiguous().view(b * h, w, w)
        out_h = torch.bmm(v_h, a_h.permute(0, 2, 1)).view(b, w, -1, h).permute(0, 2, 3, 1)
        out_w = torch.bmm(v_w, a_w.permute(0, 2, 1)).view(b, h, -1, w).permute(0, 2, 1, 3)
        return self.gamma * (out_h + out_w) + x

    def forward(self, x):
        for _ in range(self.recurrence):
            x = self.once(x)
        return x


class MultiHeadSelfAttention2d(nn.Module):
    """timm-style ``Attention`` over H*W tokens, optional Swin relative bias / absolute embed."""

    def __init__(self, channels: int, num_heads: int = 8, *, qkv_bias: bool = True,
                 position: str = "none", input_size: tuple[int, int] | None = None):
        super().__init__()
        self.num_heads, self.position = num_heads, position
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        if position == "relative":
            h, w = input_size
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * h - 1) * (2 * w - 1), num_heads))
            coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w),
                                                indexing="ij")).flatten(1)
            rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
            rel[:, :, 0] += h - 1
            rel[:, :, 1] += w - 1
            rel[:, :, 0] *= 2 * w - 1
            self.register_buffer("index", rel.sum(-1), persistent=False)
        elif position == "absolute":
            h, w = input_size
            self.pos_embed = nn.Parameter(torch.zeros(1, h, w, channels))  # stored NHWC

    def forward(self, x):
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, T, C)
        if self.position == "absolute":
            t = t + self.pos_embed.reshape(1, h * w, c)
        qkv = self.qkv(t).reshape(b, h * w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.position == "relative":
            bias = self.relative_position_bias_table[self.index.view(-1)]
            bias = bias.view(h * w, h * w, -1).permute(2, 0, 1).unsqueeze(0)
        y = TF.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        y = self.proj(y.transpose(1, 2).reshape(b, h * w, c))
        return y.transpose(1, 2).reshape(b, c, h, w)
