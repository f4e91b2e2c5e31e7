"""Channel attention as Flax linen modules (thin wrappers over ``attention_jax.functional``)."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_feature_map
from attention_jax.linen._maps import call_and_sow
from attention_jax.linen.layers import batch_norm, conv
from attention_jax.plans import (
    EfficientChannelAttentionPlan,
    GatherExcitePlan,
    GlobalContextPlan,
    SecondOrderChannelPlan,
    SqueezeExcitePlan,
)

__all__ = [
    "SqueezeExcite",
    "EfficientChannelAttention",
    "GatherExcite",
    "GlobalContext",
    "SecondOrderChannel",
]

class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation block (Hu et al., CVPR 2018), linen.

    Input (..., H, W, C) -> output (..., H, W, C). Parameters: ``fc1`` (1x1 conv C -> R) and ``fc2``
    (1x1 conv R -> C), R from ``rd_ratio``/``rd_channels``/``rd_divisor``.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``channel_weights`` (N, 1, 1, C), the gate that multiplies ``x``.

    Variables: ``params`` only (no batch statistics; ``train`` is accepted and changes nothing).
    """

    channels: int
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    add_maxpool: bool = False
    bias: bool = True
    act: Activation = "relu"
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = SqueezeExcitePlan.create(
            self.channels, rd_ratio=self.rd_ratio, rd_channels=self.rd_channels,
            rd_divisor=self.rd_divisor, add_maxpool=self.add_maxpool, bias=self.bias,
            act=self.act, gate=self.gate)
        conv1x1 = partial(conv, kernel_size=1, use_bias=p.bias, dtype=self.dtype,
                          param_dtype=self.param_dtype, precision=self.precision)
        self.fc1 = conv1x1(p.rd_channels)
        self.fc2 = conv1x1(p.channels)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: unused (no batch statistics). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("SqueezeExcite", "x", x, p.channels)
        return call_and_sow(
            self, F.squeeze_excite, x, reduce=self.fc1, expand=self.fc2, act=p.act, gate=p.gate,
            add_maxpool=p.add_maxpool,
        )


class EfficientChannelAttention(nn.Module):
    """Efficient channel attention (ECA-Net, Wang et al., CVPR 2020), linen.

    Input (..., H, W, C) -> output (..., H, W, C). Parameter: ``conv`` (1D conv over channels,
    kernel (k, 1, 1), no bias), k = ``kernel_size`` or the adaptive odd
    ``eca_kernel_size(C, gamma=gamma, beta=beta)``.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``channel_weights`` (N, 1, 1, C), the gate that multiplies ``x``.

    Variables: ``params`` only (no batch statistics; ``train`` is accepted and changes nothing).
    """

    channels: int
    kernel_size: int | None = None
    gamma: float = 2.0
    beta: float = 1.0
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = EfficientChannelAttentionPlan.create(
            self.channels, kernel_size=self.kernel_size, gamma=self.gamma, beta=self.beta,
            gate=self.gate)
        self.conv = conv(1, (p.kernel_size,), padding=p.padding, use_bias=False,
                         dtype=self.dtype, param_dtype=self.param_dtype,
                         precision=self.precision)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: unused. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("EfficientChannelAttention", "x", x, p.channels)
        return call_and_sow(self, F.efficient_channel_attention, x, conv=self.conv, gate=p.gate)


class GatherExcite(nn.Module):
    """Gather-excite (Hu et al., NeurIPS 2018), linen, as timm's ``GatherExcite``.

    Input (..., H, W, C) -> output (..., H, W, C). ``extra_params=False``: parameter-free gather
    (global mean for ``extent=0``, else strided average pooling); ``extra_params=True``:
    ``conv1..convK`` depthwise 3x3 stride-2 convs (no bias, K = log2(extent)) each followed by
    ``norm1..normK`` (BatchNorm, act between), or for ``extent=0`` one depthwise conv with a
    ``feat_size`` kernel (the input's (H, W)) and ``norm1``. ``use_mlp``: ``fc1``/``fc2`` (1x1
    convs with bias, C -> R -> C) on the gathered context.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``channel_weights`` (N, h, w, C), the gate at the gathered resolution ((1, 1) for
    ``extent=0``, else (ceil(H / extent), ceil(W / extent))), which is nearest-resized to (H, W)
    and multiplies ``x``.

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics; with
    ``extra_params`` only). ``train=False`` (default) normalises with the running statistics;
    ``train=True`` with the batch's, updating the running ones: ``apply(v, x, train=True,
    mutable=["batch_stats"])``.
    """

    channels: int
    extent: int = 0
    extra_params: bool = False
    feat_size: int | tuple[int, int] | None = None
    use_mlp: bool = True
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    act: Activation = "relu"
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = GatherExcitePlan.create(
            self.channels, extent=self.extent, extra_params=self.extra_params,
            feat_size=self.feat_size, use_mlp=self.use_mlp, rd_ratio=self.rd_ratio,
            rd_channels=self.rd_channels, rd_divisor=self.rd_divisor, act=self.act,
            gate=self.gate)
        c, common = p.channels, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i, g in enumerate(p.gather_convs, start=1):
            setattr(self, f"conv{i}", conv(c, g.kernel_size, strides=g.stride,
                                           padding=g.padding, feature_group_count=c,
                                           use_bias=False, precision=self.precision, **common))
            setattr(self, f"norm{i}", batch_norm(**common))
        if p.use_mlp:
            conv1x1 = partial(conv, kernel_size=1, precision=self.precision, **common)
            self.fc1 = conv1x1(p.rd_channels)
            self.fc2 = conv1x1(c)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: BatchNorm mode of the gather. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("GatherExcite", "x", x, p.channels)
        idx = range(1, len(p.gather_convs) + 1)
        gather = partial(
            F.ge_gather, convs=[getattr(self, f"conv{i}") for i in idx],
            norms=[partial(getattr(self, f"norm{i}"), use_running_average=not train)
                   for i in idx], act=p.act) if p.gather_convs else None
        return call_and_sow(
            self, F.gather_excite, x, extent=p.extent, gather=gather,
            reduce=self.fc1 if p.use_mlp else None, expand=self.fc2 if p.use_mlp else None,
            act=p.act, gate=p.gate,
        )


class GlobalContext(nn.Module):
    """Global context block (GCNet, Cao et al., ICCVW 2019), linen.

    Input (..., H, W, C) -> output (..., H, W, C). Parameters: ``conv_attn`` (1x1 conv C -> 1; no
    bias by default: the official one cancels in the softmax over H*W, so it is dropped;
    ``attn_bias=True`` keeps it, as timm does, so its weights load); for ``fuse_add``
    ``add_fc1`` (1x1 C -> R), ``add_norm`` (LayerNorm over R, epsilon ``eps``: 1e-5 as the
    official code, timm 1e-6) and ``add_fc2`` (1x1 R -> C); for ``fuse_scale`` the same as
    ``scale_*``. Defaults follow the paper and the official code (fusion by add, r = 16; timm
    defaults to scale fusion, r = 8).

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``context_weights`` (N, H, W, 1), the attention-pooling softmax over the H * W positions
    (sums to 1); with ``fuse_add`` ``channel_add`` (N, 1, 1, C), the term added to ``x``; with
    ``fuse_scale`` ``channel_weights`` (N, 1, 1, C), the gate that multiplies ``x``.

    Variables: ``params`` only (no batch statistics; ``train`` is accepted and changes nothing).
    """

    channels: int
    fuse_add: bool = True
    fuse_scale: bool = False
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    eps: float = 1e-5
    attn_bias: bool = False
    act: Activation = "relu"
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = GlobalContextPlan.create(
            self.channels, fuse_add=self.fuse_add, fuse_scale=self.fuse_scale,
            rd_ratio=self.rd_ratio, rd_channels=self.rd_channels, rd_divisor=self.rd_divisor,
            eps=self.eps, attn_bias=self.attn_bias, act=self.act, gate=self.gate)
        conv1x1 = partial(conv, kernel_size=1, dtype=self.dtype, param_dtype=self.param_dtype,
                          precision=self.precision)
        norm = partial(nn.LayerNorm, epsilon=p.eps, use_fast_variance=False, dtype=self.dtype,
                       param_dtype=self.param_dtype)
        # A bias is a constant logit: it cancels in the softmax over H*W (zero gradient).
        self.conv_attn = conv1x1(1, use_bias=p.attn_bias)
        if p.fuse_add:
            self.add_fc1, self.add_norm = conv1x1(p.rd_channels), norm()
            self.add_fc2 = conv1x1(p.channels)
        if p.fuse_scale:
            self.scale_fc1, self.scale_norm = conv1x1(p.rd_channels), norm()
            self.scale_fc2 = conv1x1(p.channels)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: unused. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("GlobalContext", "x", x, p.channels)
        add = (self.add_fc1, self.add_norm, self.add_fc2) if p.fuse_add else None
        scale = (self.scale_fc1, self.scale_norm, self.scale_fc2) if p.fuse_scale else None
        return call_and_sow(
            self, F.global_context, x, attn=self.conv_attn, add_transform=add,
            scale_transform=scale, act=p.act, gate=p.gate,
        )


class SecondOrderChannel(nn.Module):
    """Second-order channel attention (SOCA, Dai et al., CVPR 2019), linen.

    Input (..., H, W, C) -> output (..., H, W, C). Parameters: ``fc1`` (1x1 conv C -> R, bias) and
    ``fc2`` (1x1 conv R -> C, bias) on the covariance-square-root descriptor; ``iterations``
    Newton-Schulz steps (5 as in the official SAN code).

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``channel_weights`` (N, 1, 1, C), the gate that multiplies ``x``.

    Variables: ``params`` only (no batch statistics; ``train`` is accepted and changes nothing).
    """

    channels: int
    iterations: int = 5
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    act: Activation = "relu"
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = SecondOrderChannelPlan.create(
            self.channels, iterations=self.iterations, rd_ratio=self.rd_ratio,
            rd_channels=self.rd_channels, rd_divisor=self.rd_divisor, act=self.act,
            gate=self.gate)
        conv1x1 = partial(conv, kernel_size=1, dtype=self.dtype, param_dtype=self.param_dtype,
                          precision=self.precision)
        self.fc1 = conv1x1(p.rd_channels)
        self.fc2 = conv1x1(p.channels)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: unused. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("SecondOrderChannel", "x", x, p.channels)
        return call_and_sow(
            self, F.second_order_channel, x, reduce=self.fc1, expand=self.fc2, act=p.act,
            gate=p.gate, iterations=p.iterations,
        )
