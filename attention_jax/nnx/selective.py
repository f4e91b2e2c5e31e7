"""Selective attention (SK-Net, ResNeSt) as Flax nnx modules (thin wrappers over functional)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_nhwc
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.functional.selective import _sk_widths, _splat_widths

__all__ = ["SelectiveKernel", "SplitAttention"]

# PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here), so converted weights behave;
# the two-pass variance (as PyTorch) stays accurate when the batch statistics are near-constant.
_BN = {"momentum": 0.9, "epsilon": 1e-5, "use_fast_variance": False}


class SelectiveKernel(nnx.Module):
    """Selective kernel convolution (Li et al., "Selective Kernel Networks", CVPR 2019), nnx.

    Input (N, H, W, C) -> output (N, H / stride, W / stride, out_channels). Same fields and
    parameters as the linen module (``conv{m}``/``bn{m}`` per branch, ``fc_reduce``, ``fc_bn``,
    ``fc_select``); the paper's M, G, r, L are ``num_paths``, ``groups``, ``1 / rd_ratio``,
    ``rd_min_channels``. BatchNorm mode via ``module.train()`` / ``module.eval()``.
    """

    def __init__(
        self,
        channels: int,
        *,
        out_channels: int | None = None,
        num_paths: int = 2,
        groups: int = 1,
        stride: int = 1,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        rd_min_channels: int = 32,
        act: Activation = "relu",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        out, rd = _sk_widths("SelectiveKernel", channels, out_channels, num_paths, groups,
                             stride, rd_ratio, rd_channels, rd_divisor, rd_min_channels)
        conv = partial(nnx.Conv, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                       precision=precision, rngs=rngs,
                       conv_general_dilated=conv_general_dilated)
        bn = partial(nnx.BatchNorm, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **_BN)
        self.channels, self.num_paths, self.act = channels, num_paths, act
        for m in range(num_paths):
            d = m + 1
            setattr(self, f"conv{m}", conv(channels, out, (3, 3), strides=stride,
                                           padding=((d, d), (d, d)), kernel_dilation=d,
                                           feature_group_count=groups))
            setattr(self, f"bn{m}", bn(out))
        self.fc_reduce = conv(out, rd, (1, 1))
        self.fc_bn = bn(rd)
        self.fc_select = conv(rd, out * num_paths, (1, 1))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H', W', C')."""
        check_nhwc("SelectiveKernel", "x", x, self.channels)
        return F.selective_kernel(
            x,
            convs=[getattr(self, f"conv{m}") for m in range(self.num_paths)],
            norms=[getattr(self, f"bn{m}") for m in range(self.num_paths)],
            reduce=self.fc_reduce, reduce_norm=self.fc_bn, select=self.fc_select, act=self.act,
        )


class SplitAttention(nnx.Module):
    """Split-attention convolution (Zhang et al., "ResNeSt", 2020), nnx.

    Input (N, H, W, C) -> output (N, H / stride, W / stride, out_channels). Same fields and
    parameters as the linen module (``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``); ``groups`` is
    the cardinality, ``radix`` the number of splits. BatchNorm mode via ``module.train()`` /
    ``module.eval()``.
    """

    def __init__(
        self,
        channels: int,
        *,
        out_channels: int | None = None,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        radix: int = 2,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        rd_min_channels: int = 32,
        bias: bool = False,
        act: Activation = "relu",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        out, rd = _splat_widths("SplitAttention", channels, out_channels, kernel_size, stride,
                                dilation, groups, radix, rd_ratio, rd_channels, rd_divisor,
                                rd_min_channels)
        conv = partial(nnx.Conv, dtype=dtype, param_dtype=param_dtype, precision=precision,
                       rngs=rngs,
                       conv_general_dilated=conv_general_dilated)
        bn = partial(nnx.BatchNorm, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **_BN)
        self.channels, self.radix, self.groups, self.act = channels, radix, groups, act
        k, d = kernel_size, dilation
        p = d * (k - 1) // 2
        self.conv = conv(channels, out * radix, (k, k), strides=stride, padding=((p, p), (p, p)),
                         kernel_dilation=d, feature_group_count=groups * radix, use_bias=bias)
        self.bn0 = bn(out * radix)
        self.fc1 = conv(out, rd, (1, 1), feature_group_count=groups)
        self.bn1 = bn(rd)
        self.fc2 = conv(rd, out * radix, (1, 1), feature_group_count=groups)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H', W', C')."""
        check_nhwc("SplitAttention", "x", x, self.channels)
        return F.split_attention(
            x, conv=self.conv, norm0=self.bn0, reduce=self.fc1, norm1=self.bn1,
            expand=self.fc2, radix=self.radix, cardinality=self.groups, act=self.act,
        )
