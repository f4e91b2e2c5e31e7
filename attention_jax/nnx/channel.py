"""Channel attention as Flax nnx modules (thin wrappers over ``attention_jax.functional``)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

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


class SqueezeExcite(nnx.Module):
    """Squeeze-and-excitation block (Hu et al., CVPR 2018), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Same parameters as the linen module: ``fc1``
    (1x1 conv C -> R) and ``fc2`` (1x1 conv R -> C).
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        add_maxpool: bool = False,
        bias: bool = True,
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        rd = F.reduced_channels("SqueezeExcite", channels, rd_ratio=rd_ratio,
                                rd_channels=rd_channels, rd_divisor=rd_divisor)
        conv = partial(nnx.Conv, kernel_size=(1, 1), use_bias=bias, dtype=dtype,
                       param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.channels = channels
        self.add_maxpool, self.act, self.gate = add_maxpool, act, gate
        self.fc1 = conv(channels, rd)
        self.fc2 = conv(rd, channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("SqueezeExcite", "x", x, self.channels)
        return F.squeeze_excite(x, reduce=self.fc1, expand=self.fc2, act=self.act,
                                gate=self.gate, add_maxpool=self.add_maxpool)


class EfficientChannelAttention(nnx.Module):
    """Efficient channel attention (ECA-Net, Wang et al., CVPR 2020), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Same parameter as the linen module: ``conv``
    (1D conv over channels, kernel (k, 1, 1), no bias).
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2.0,
        beta: float = 1.0,
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        k = _eca_kernel("EfficientChannelAttention", channels, kernel_size, gamma, beta)
        self.channels, self.gate = channels, gate
        self.conv = nnx.Conv(1, 1, kernel_size=(k,), padding=[((k - 1) // 2, (k - 1) // 2)],
                             use_bias=False, dtype=dtype, param_dtype=param_dtype,
                             precision=precision, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("EfficientChannelAttention", "x", x, self.channels)
        return F.efficient_channel_attention(x, conv=self.conv, gate=self.gate)


class GatherExcite(nnx.Module):
    """Gather-excite (Hu et al., NeurIPS 2018), nnx, as timm's ``GatherExcite``.

    Input (N, H, W, C) -> output (N, H, W, C). Same parameters as the linen module: gather
    ``conv1..convK``/``norm1..normK`` when ``extra_params``, MLP ``fc1``/``fc2`` when ``use_mlp``.
    """

    def __init__(
        self,
        channels: int,
        *,
        extent: int = 0,
        extra_params: bool = False,
        feat_size: int | tuple[int, int] | None = None,
        use_mlp: bool = True,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        fn = "GatherExcite"
        check_positive_int(fn, "channels", channels)
        specs = _ge_gather_convs(fn, extent, extra_params, feat_size)
        c = channels
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.channels, self.extent, self.act, self.gate = channels, extent, act, gate
        self.n_gather, self.use_mlp = len(specs), use_mlp
        for i, (kernel, stride, pad) in enumerate(specs, start=1):
            setattr(self, f"conv{i}", nnx.Conv(c, c, kernel_size=kernel, strides=stride,
                                               padding=pad, feature_group_count=c,
                                               use_bias=False, precision=precision, **common))
            setattr(self, f"norm{i}", nnx.BatchNorm(c, momentum=_BN_MOMENTUM, epsilon=1e-5,
                                                    **common))
        if use_mlp:
            rd = F.reduced_channels(fn, c, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                    rd_divisor=rd_divisor)
            self.fc1 = nnx.Conv(c, rd, kernel_size=(1, 1), precision=precision, **common)
            self.fc2 = nnx.Conv(rd, c, kernel_size=(1, 1), precision=precision, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("GatherExcite", "x", x, self.channels)
        gather = None
        if self.n_gather:
            idx = range(1, self.n_gather + 1)
            gather = partial(F.ge_gather, convs=[getattr(self, f"conv{i}") for i in idx],
                             norms=[getattr(self, f"norm{i}") for i in idx], act=self.act)
        return F.gather_excite(
            x, extent=self.extent, gather=gather,
            reduce=self.fc1 if self.use_mlp else None,
            expand=self.fc2 if self.use_mlp else None, act=self.act, gate=self.gate,
        )


class GlobalContext(nnx.Module):
    """Global context block (GCNet, Cao et al., ICCVW 2019), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Same fields and parameters as the linen module:
    ``conv_attn`` (with a bias if ``attn_bias``); ``add_fc1``/``add_norm``/``add_fc2`` and/or
    ``scale_fc1``/``scale_norm``/``scale_fc2``; ``eps`` is the LayerNorm epsilon.
    """

    def __init__(
        self,
        channels: int,
        *,
        fuse_add: bool = True,
        fuse_scale: bool = False,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        eps: float = 1e-5,
        attn_bias: bool = False,
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        fn = "GlobalContext"
        _check_eps(fn, eps)
        if not (fuse_add or fuse_scale):
            raise fail(fn, "fuse_add / fuse_scale", "at least one True", "both False")
        rd = F.reduced_channels(fn, channels, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                rd_divisor=rd_divisor)
        conv = partial(nnx.Conv, kernel_size=(1, 1), dtype=dtype, param_dtype=param_dtype,
                       precision=precision, rngs=rngs)
        norm = partial(nnx.LayerNorm, rd, epsilon=eps, use_fast_variance=False, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)
        self.channels, self.fuse_add, self.fuse_scale = channels, fuse_add, fuse_scale
        self.act, self.gate = act, gate
        # A bias is a constant logit: it cancels in the softmax over H*W (zero gradient).
        self.conv_attn = conv(channels, 1, use_bias=attn_bias)
        if fuse_add:
            self.add_fc1, self.add_norm, self.add_fc2 = conv(channels, rd), norm(), conv(rd,
                                                                                         channels)
        if fuse_scale:
            self.scale_fc1, self.scale_norm, self.scale_fc2 = (conv(channels, rd), norm(),
                                                               conv(rd, channels))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("GlobalContext", "x", x, self.channels)
        add = (self.add_fc1, self.add_norm, self.add_fc2) if self.fuse_add else None
        scale = (self.scale_fc1, self.scale_norm, self.scale_fc2) if self.fuse_scale else None
        return F.global_context(x, attn=self.conv_attn, add_transform=add,
                                scale_transform=scale, act=self.act, gate=self.gate)


class SecondOrderChannel(nnx.Module):
    """Second-order channel attention (SOCA, Dai et al., CVPR 2019), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Same parameters as the linen module: ``fc1``
    (1x1 conv C -> R, bias) and ``fc2`` (1x1 conv R -> C, bias).
    """

    def __init__(
        self,
        channels: int,
        *,
        iterations: int = 5,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        fn = "SecondOrderChannel"
        check_positive_int(fn, "iterations", iterations)
        rd = F.reduced_channels(fn, channels, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                rd_divisor=rd_divisor)
        conv = partial(nnx.Conv, kernel_size=(1, 1), dtype=dtype, param_dtype=param_dtype,
                       precision=precision, rngs=rngs)
        self.channels, self.iterations, self.act, self.gate = channels, iterations, act, gate
        self.fc1 = conv(channels, rd)
        self.fc2 = conv(rd, channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("SecondOrderChannel", "x", x, self.channels)
        return F.second_order_channel(x, reduce=self.fc1, expand=self.fc2, act=self.act,
                                      gate=self.gate, iterations=self.iterations)
