"""Selective attention (SK-Net, ResNeSt) as Flax nnx modules (thin wrappers over functional)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_feature_map
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.nnx._maps import call_and_sow
from attention_jax.nnx.layers import batch_norm, conv
from attention_jax.plans import SelectiveKernelPlan, SplitAttentionPlan

__all__ = ["SelectiveKernel", "SplitAttention"]


class SelectiveKernel(nnx.Module):
    """Selective kernel convolution (Li et al., "Selective Kernel Networks", CVPR 2019), nnx.

    Input (..., H, W, C) -> output (..., H / stride, W / stride, out_channels). Same fields and
    parameters as the linen module (``conv{m}``/``bn{m}`` per branch, ``fc_reduce``, ``fc_bn``,
    ``fc_select``); the paper's M, G, r, L are ``num_paths``, ``groups``, ``1 / rd_ratio``,
    ``rd_min_channels``; ``split_input`` feeds branch m the m-th of M channel slices (each
    ``conv{m}`` takes C / M channels). BatchNorm mode via ``module.train()`` / ``module.eval()``.

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``branch_weights``
    (N, M, C), the softmax over the M = ``num_paths`` branches (sums to 1 over axis 1) with
    which their outputs are summed (C = ``out_channels``).

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics). A new module
    is in training mode (batch statistics, running ones updated in place); ``module.eval()``
    switches to the running statistics, ``module.train()`` back.
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
        split_input: bool = False,
        act: Activation = "relu",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        p = self.plan = SelectiveKernelPlan.create(
            channels, out_channels=out_channels, num_paths=num_paths, groups=groups,
            stride=stride, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
            rd_min_channels=rd_min_channels, split_input=split_input, act=act)
        c, out, rd = p.branch_channels, p.out_channels, p.rd_channels
        conv_ = partial(conv, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                        precision=precision, rngs=rngs, conv_general_dilated=conv_general_dilated)
        bn = partial(batch_norm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for m, d in enumerate(p.dilations):
            setattr(self, f"conv{m}", conv_(c, out, 3, strides=p.stride, padding=d,
                                            kernel_dilation=d, feature_group_count=p.groups))
            setattr(self, f"bn{m}", bn(out))
        self.fc_reduce = conv_(out, rd, 1)
        self.fc_bn = bn(rd)
        self.fc_select = conv_(rd, out * p.num_paths, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H', W', C')."""
        p = self.plan
        check_feature_map("SelectiveKernel", "x", x, p.channels)
        return call_and_sow(
            self, F.selective_kernel, x,
            convs=[getattr(self, f"conv{m}") for m in range(p.num_paths)],
            norms=[getattr(self, f"bn{m}") for m in range(p.num_paths)],
            reduce=self.fc_reduce, reduce_norm=self.fc_bn, select=self.fc_select, act=p.act,
            split_input=p.split_input,
        )


class SplitAttention(nnx.Module):
    """Split-attention convolution (Zhang et al., "ResNeSt", 2020), nnx.

    Input (..., H, W, C) -> output (..., H / stride, W / stride, out_channels). Same fields and
    parameters as the linen module (``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``); ``groups`` is
    the cardinality, ``radix`` the number of splits. BatchNorm mode via ``module.train()`` /
    ``module.eval()``.

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``branch_weights``
    (N, R, C), the r-softmax over the R = ``radix`` splits (sums to 1 over axis 1; a sigmoid for
    R = 1) with which they are summed (C = ``out_channels``).

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics). A new module
    is in training mode (batch statistics, running ones updated in place); ``module.eval()``
    switches to the running statistics, ``module.train()`` back.
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
        p = self.plan = SplitAttentionPlan.create(
            channels, out_channels=out_channels, kernel_size=kernel_size, stride=stride,
            dilation=dilation, groups=groups, radix=radix, rd_ratio=rd_ratio,
            rd_channels=rd_channels, rd_divisor=rd_divisor, rd_min_channels=rd_min_channels,
            bias=bias, act=act)
        conv_ = partial(conv, dtype=dtype, param_dtype=param_dtype, precision=precision,
                        rngs=rngs, conv_general_dilated=conv_general_dilated)
        bn = partial(batch_norm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        out, width, rd = p.out_channels, p.out_channels * p.radix, p.rd_channels
        self.conv = conv_(p.channels, width, p.kernel_size, strides=p.stride,
                          padding=p.padding, kernel_dilation=p.dilation,
                          feature_group_count=p.groups * p.radix, use_bias=p.bias)
        self.bn0 = bn(width)
        self.fc1 = conv_(out, rd, 1, feature_group_count=p.groups)
        self.bn1 = bn(rd)
        self.fc2 = conv_(rd, width, 1, feature_group_count=p.groups)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H', W', C')."""
        p = self.plan
        check_feature_map("SplitAttention", "x", x, p.channels)
        return call_and_sow(
            self, F.split_attention, x, conv=self.conv, norm0=self.bn0, reduce=self.fc1,
            norm1=self.bn1, expand=self.fc2, radix=p.radix, cardinality=p.groups, act=p.act,
        )
