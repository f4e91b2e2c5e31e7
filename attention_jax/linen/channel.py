"""Channel attention as Flax linen modules (thin wrappers over ``attention_jax.functional``)."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_nhwc, check_positive_int, fail
from attention_jax.functional.channel import _check_eps, _eca_kernel, _ge_gather_convs

__all__ = [
    "SqueezeExcite",
    "EfficientChannelAttention",
    "GatherExcite",
    "GlobalContext",
    "SecondOrderChannel",
]

# Flax's BatchNorm momentum is PyTorch's 1 - momentum: 0.9 here is torch's default 0.1.
_BN_MOMENTUM = 0.9


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation block (Hu et al., CVPR 2018), linen.

    Input (N, H, W, C) -> output (N, H, W, C). Parameters: ``fc1`` (1x1 conv C -> R) and ``fc2``
    (1x1 conv R -> C), R from ``rd_ratio``/``rd_channels``/``rd_divisor``.
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
        rd = F.reduced_channels(
            "SqueezeExcite", self.channels, rd_ratio=self.rd_ratio,
            rd_channels=self.rd_channels, rd_divisor=self.rd_divisor,
        )
        conv = partial(nn.Conv, kernel_size=(1, 1), use_bias=self.bias, dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision)
        self.fc1 = conv(rd)
        self.fc2 = conv(self.channels)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused (no batch statistics). Returns (N, H, W, C)."""
        check_nhwc("SqueezeExcite", "x", x, self.channels)
        return F.squeeze_excite(x, reduce=self.fc1, expand=self.fc2, act=self.act,
                                gate=self.gate, add_maxpool=self.add_maxpool)


class EfficientChannelAttention(nn.Module):
    """Efficient channel attention (ECA-Net, Wang et al., CVPR 2020), linen.

    Input (N, H, W, C) -> output (N, H, W, C). Parameter: ``conv`` (1D conv over channels,
    kernel (k, 1, 1), no bias), k = ``kernel_size`` or the adaptive odd
    ``eca_kernel_size(C, gamma=gamma, beta=beta)``.
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
        k = _eca_kernel("EfficientChannelAttention", self.channels, self.kernel_size,
                        self.gamma, self.beta)
        self.conv = nn.Conv(1, kernel_size=(k,), padding=[((k - 1) // 2, (k - 1) // 2)],
                            use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                            precision=self.precision)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns (N, H, W, C)."""
        check_nhwc("EfficientChannelAttention", "x", x, self.channels)
        return F.efficient_channel_attention(x, conv=self.conv, gate=self.gate)


class GatherExcite(nn.Module):
    """Gather-excite (Hu et al., NeurIPS 2018), linen, as timm's ``GatherExcite``.

    Input (N, H, W, C) -> output (N, H, W, C). ``extra_params=False``: parameter-free gather
    (global mean for ``extent=0``, else strided average pooling); ``extra_params=True``:
    ``conv1..convK`` depthwise 3x3 stride-2 convs (no bias, K = log2(extent)) each followed by
    ``norm1..normK`` (BatchNorm, act between), or for ``extent=0`` one depthwise conv with a
    ``feat_size`` kernel (the input's (H, W)) and ``norm1``. ``use_mlp``: ``fc1``/``fc2`` (1x1
    convs with bias, C -> R -> C) on the gathered context.
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
        fn = "GatherExcite"
        c = self.channels
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i, (kernel, stride, pad) in enumerate(
            _ge_gather_convs(fn, self.extent, self.extra_params, self.feat_size), start=1
        ):
            setattr(self, f"conv{i}", nn.Conv(c, kernel_size=kernel, strides=stride, padding=pad,
                                              feature_group_count=c, use_bias=False,
                                              precision=self.precision, **common))
            setattr(self, f"norm{i}", nn.BatchNorm(use_running_average=None,
                                                   momentum=_BN_MOMENTUM, epsilon=1e-5, **common))
        if self.use_mlp:
            rd = F.reduced_channels(fn, c, rd_ratio=self.rd_ratio, rd_channels=self.rd_channels,
                                    rd_divisor=self.rd_divisor)
            conv1x1 = partial(nn.Conv, kernel_size=(1, 1), precision=self.precision, **common)
            self.fc1 = conv1x1(rd)
            self.fc2 = conv1x1(c)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: BatchNorm mode of the gather. Returns (N, H, W, C)."""
        check_nhwc("GatherExcite", "x", x, self.channels)
        n = len(_ge_gather_convs("GatherExcite", self.extent, self.extra_params, self.feat_size))
        gather = None
        if n:
            convs = [getattr(self, f"conv{i}") for i in range(1, n + 1)]
            norms = [partial(getattr(self, f"norm{i}"), use_running_average=not train)
                     for i in range(1, n + 1)]
            gather = partial(F.ge_gather, convs=convs, norms=norms, act=self.act)
        return F.gather_excite(
            x, extent=self.extent, gather=gather,
            reduce=self.fc1 if self.use_mlp else None,
            expand=self.fc2 if self.use_mlp else None, act=self.act, gate=self.gate,
        )


class GlobalContext(nn.Module):
    """Global context block (GCNet, Cao et al., ICCVW 2019), linen.

    Input (N, H, W, C) -> output (N, H, W, C). Parameters: ``conv_attn`` (1x1 conv C -> 1; no
    bias by default: the official one cancels in the softmax over H*W, so it is dropped;
    ``attn_bias=True`` keeps it, as timm does, so its weights load); for ``fuse_add``
    ``add_fc1`` (1x1 C -> R), ``add_norm`` (LayerNorm over R, epsilon ``eps``: 1e-5 as the
    official code, timm 1e-6) and ``add_fc2`` (1x1 R -> C); for ``fuse_scale`` the same as
    ``scale_*``. Defaults follow the paper and the official code (fusion by add, r = 16; timm
    defaults to scale fusion, r = 8).
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
        fn = "GlobalContext"
        _check_eps(fn, self.eps)
        if not (self.fuse_add or self.fuse_scale):
            raise fail(fn, "fuse_add / fuse_scale", "at least one True", "both False")
        rd = F.reduced_channels(fn, self.channels, rd_ratio=self.rd_ratio,
                                rd_channels=self.rd_channels, rd_divisor=self.rd_divisor)
        conv = partial(nn.Conv, kernel_size=(1, 1), dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision)
        norm = partial(nn.LayerNorm, epsilon=self.eps, use_fast_variance=False, dtype=self.dtype,
                       param_dtype=self.param_dtype)
        # A bias is a constant logit: it cancels in the softmax over H*W (zero gradient).
        self.conv_attn = conv(1, use_bias=self.attn_bias)
        if self.fuse_add:
            self.add_fc1, self.add_norm, self.add_fc2 = conv(rd), norm(), conv(self.channels)
        if self.fuse_scale:
            self.scale_fc1, self.scale_norm, self.scale_fc2 = (conv(rd), norm(),
                                                               conv(self.channels))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns (N, H, W, C)."""
        check_nhwc("GlobalContext", "x", x, self.channels)
        add = (self.add_fc1, self.add_norm, self.add_fc2) if self.fuse_add else None
        scale = (self.scale_fc1, self.scale_norm, self.scale_fc2) if self.fuse_scale else None
        return F.global_context(x, attn=self.conv_attn, add_transform=add,
                                scale_transform=scale, act=self.act, gate=self.gate)


class SecondOrderChannel(nn.Module):
    """Second-order channel attention (SOCA, Dai et al., CVPR 2019), linen.

    Input (N, H, W, C) -> output (N, H, W, C). Parameters: ``fc1`` (1x1 conv C -> R, bias) and
    ``fc2`` (1x1 conv R -> C, bias) on the covariance-square-root descriptor; ``iterations``
    Newton-Schulz steps (5 as in the official SAN code).
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
        fn = "SecondOrderChannel"
        check_positive_int(fn, "iterations", self.iterations)
        rd = F.reduced_channels(fn, self.channels, rd_ratio=self.rd_ratio,
                                rd_channels=self.rd_channels, rd_divisor=self.rd_divisor)
        conv = partial(nn.Conv, kernel_size=(1, 1), dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision)
        self.fc1 = conv(rd)
        self.fc2 = conv(self.channels)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns (N, H, W, C)."""
        check_nhwc("SecondOrderChannel", "x", x, self.channels)
        return F.second_order_channel(x, reduce=self.fc1, expand=self.fc2, act=self.act,
                                      gate=self.gate, iterations=self.iterations)
