"""Selective attention (SK-Net, ResNeSt) as Flax linen modules (thin wrappers over functional)."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_feature_map
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.linen._maps import call_and_sow
from attention_jax.linen.layers import batch_norm, conv
from attention_jax.plans import SelectiveKernelPlan, SplitAttentionPlan

__all__ = ["SelectiveKernel", "SplitAttention"]


class SelectiveKernel(nn.Module):
    """Selective kernel convolution (Li et al., "Selective Kernel Networks", CVPR 2019), linen.

    Input (..., H, W, C) -> output (..., H / stride, W / stride, out_channels) (out_channels = C by
    default). The paper's fields: M = ``num_paths`` (branch m is a 3x3 conv with dilation m + 1,
    standing for a (2m + 3)x(2m + 3) kernel), G = ``groups``, r = ``1 / rd_ratio``,
    L = ``rd_min_channels``; the attention width is ``d = max(make_divisible(out * rd_ratio,
    rd_divisor), L)`` unless ``rd_channels`` is given. SKNet-50 uses M=2, G=32, r=16, L=32.
    Parameters: ``conv{m}``/``bn{m}`` per branch, ``fc_reduce`` (1x1, C -> d), ``fc_bn``,
    ``fc_select`` (1x1, d -> M * C, branch-major). ``split_input``: branch m convolves only the
    m-th of M equal channel slices of the input (timm's SK-ResNet-18/34), so each ``conv{m}``
    takes C / M channels.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``branch_weights`` (N, M, C), the softmax over the M = ``num_paths`` branches
    (sums to 1 over axis 1) with which their outputs are summed (C = ``out_channels``).

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics). ``train=False``
    (default) normalises with the running statistics; ``train=True`` with the batch's, updating
    the running ones: ``apply(v, x, train=True, mutable=["batch_stats"])``.
    """

    channels: int
    out_channels: int | None = None
    num_paths: int = 2
    groups: int = 1
    stride: int = 1
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    rd_min_channels: int = 32
    split_input: bool = False
    act: Activation = "relu"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = SelectiveKernelPlan.create(
            self.channels, out_channels=self.out_channels, num_paths=self.num_paths,
            groups=self.groups, stride=self.stride, rd_ratio=self.rd_ratio,
            rd_channels=self.rd_channels, rd_divisor=self.rd_divisor,
            rd_min_channels=self.rd_min_channels, split_input=self.split_input, act=self.act)
        conv_ = partial(conv, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision, conv_general_dilated=conv_general_dilated)
        bn = partial(batch_norm, dtype=self.dtype, param_dtype=self.param_dtype)
        for m, d in enumerate(p.dilations):
            setattr(self, f"conv{m}", conv_(p.out_channels, 3, strides=p.stride, padding=d,
                                            kernel_dilation=d, feature_group_count=p.groups))
            setattr(self, f"bn{m}", bn())
        self.fc_reduce = conv_(p.rd_channels, 1)
        self.fc_bn = bn()
        self.fc_select = conv_(p.out_channels * p.num_paths, 1)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: BatchNorm batch statistics. Returns (..., H', W', C')."""
        p = self.plan
        check_feature_map("SelectiveKernel", "x", x, p.channels)
        ura = not train
        return call_and_sow(
            self, F.selective_kernel, x,
            convs=[getattr(self, f"conv{m}") for m in range(p.num_paths)],
            norms=[partial(getattr(self, f"bn{m}"), use_running_average=ura)
                   for m in range(p.num_paths)],
            reduce=self.fc_reduce,
            reduce_norm=partial(self.fc_bn, use_running_average=ura),
            select=self.fc_select,
            act=p.act,
            split_input=p.split_input,
        )


class SplitAttention(nn.Module):
    """Split-attention convolution (Zhang et al., "ResNeSt", 2020), linen.

    Input (..., H, W, C) -> output (..., H / stride, W / stride, out_channels) (out_channels = C by
    default). ``radix`` R splits, ``groups`` = cardinality K; a KxR-grouped ``conv`` gives
    R * out channels (then ``bn0``, ReLU); ``fc1`` (1x1, grouped by K, out -> d) + ``bn1`` +
    ReLU, ``fc2`` (1x1, grouped by K, d -> R * out), r-softmax across splits (sigmoid when
    R = 1). Width ``d = max(make_divisible(C * R * rd_ratio, rd_divisor), rd_min_channels)``
    unless ``rd_channels`` is given; ResNeSt uses ``rd_ratio=1/4`` (its reduction_factor 4) and
    ``rd_min_channels=32``; the family default ``rd_ratio`` is 1/16.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``branch_weights`` (N, R, C), the r-softmax over the R = ``radix`` splits (sums to 1 over
    axis 1; a sigmoid for R = 1) with which they are summed (C = ``out_channels``).

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics). ``train=False``
    (default) normalises with the running statistics; ``train=True`` with the batch's, updating
    the running ones: ``apply(v, x, train=True, mutable=["batch_stats"])``.
    """

    channels: int
    out_channels: int | None = None
    kernel_size: int = 3
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    radix: int = 2
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    rd_min_channels: int = 32
    bias: bool = False
    act: Activation = "relu"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = SplitAttentionPlan.create(
            self.channels, out_channels=self.out_channels, kernel_size=self.kernel_size,
            stride=self.stride, dilation=self.dilation, groups=self.groups, radix=self.radix,
            rd_ratio=self.rd_ratio, rd_channels=self.rd_channels, rd_divisor=self.rd_divisor,
            rd_min_channels=self.rd_min_channels, bias=self.bias, act=self.act)
        conv_ = partial(conv, dtype=self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision, conv_general_dilated=conv_general_dilated)
        bn = partial(batch_norm, dtype=self.dtype, param_dtype=self.param_dtype)
        width = p.out_channels * p.radix
        self.conv = conv_(width, p.kernel_size, strides=p.stride, padding=p.padding,
                          kernel_dilation=p.dilation, feature_group_count=p.groups * p.radix,
                          use_bias=p.bias)
        self.bn0 = bn()
        self.fc1 = conv_(p.rd_channels, 1, feature_group_count=p.groups)
        self.bn1 = bn()
        self.fc2 = conv_(width, 1, feature_group_count=p.groups)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: BatchNorm batch statistics. Returns (..., H', W', C')."""
        p = self.plan
        check_feature_map("SplitAttention", "x", x, p.channels)
        ura = not train
        return call_and_sow(
            self, F.split_attention, x, conv=self.conv,
            norm0=partial(self.bn0, use_running_average=ura), reduce=self.fc1,
            norm1=partial(self.bn1, use_running_average=ura), expand=self.fc2, radix=p.radix,
            cardinality=p.groups, act=p.act,
        )
