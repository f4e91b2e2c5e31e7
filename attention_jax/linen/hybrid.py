"""Hybrid (channel + spatial) attention as Flax linen modules: CBAM, BAM, coordinate attention."""

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
from attention_jax.plans import (
    BAMPlan,
    CBAMPlan,
    ChannelGatePlan,
    CoordinateAttentionPlan,
    SpatialGatePlan,
)

__all__ = ["ChannelGate", "SpatialGate", "CBAM", "BAM", "CoordinateAttention"]


class ChannelGate(nn.Module):
    """CBAM channel attention (Woo et al., ECCV 2018), linen.

    Input (..., H, W, C) -> output (..., H, W, C). Parameters: ``fc1`` (1x1 conv C -> R) and ``fc2``
    (1x1 conv R -> C), the MLP shared by the avg- and max-pooled descriptors; no bias by default
    (as timm; the official code's ``nn.Linear`` has one: ``bias=True``).

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``channel_weights`` (N, 1, 1, C), the gate Mc that multiplies ``x``.

    Variables: ``params`` only (no batch statistics; ``train`` is accepted and changes nothing).
    """

    channels: int
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    bias: bool = False
    act: Activation = "relu"
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = ChannelGatePlan.create(
            self.channels, rd_ratio=self.rd_ratio, rd_channels=self.rd_channels,
            rd_divisor=self.rd_divisor, bias=self.bias, act=self.act, gate=self.gate)
        conv1x1 = partial(conv, kernel_size=1, use_bias=p.bias, dtype=self.dtype,
                          param_dtype=self.param_dtype, precision=self.precision)
        self.fc1 = conv1x1(p.rd_channels)
        self.fc2 = conv1x1(p.channels)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: unused. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("ChannelGate", "x", x, p.channels)
        return call_and_sow(
            self, F.cbam_channel_gate, x, reduce=self.fc1, expand=self.fc2, act=p.act, gate=p.gate,
        )


class SpatialGate(nn.Module):
    """CBAM spatial attention (Woo et al., ECCV 2018), linen.

    Input (..., H, W, C) -> output (..., H, W, C). Parameters: ``conv`` (k x k conv 2 -> 1, no bias,
    "same" padding; k = ``kernel_size``, odd) and ``bn`` (BatchNorm on the one-channel map, as in
    the official code, torch momentum 0.01).

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``spatial_map`` (N, H, W, 1), the gate Ms that multiplies ``x``.

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics). ``train=False``
    (default) normalises with the running statistics; ``train=True`` with the batch's, updating
    the running ones: ``apply(v, x, train=True, mutable=["batch_stats"])``.
    """

    channels: int
    kernel_size: int = 7
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = SpatialGatePlan.create(self.channels, kernel_size=self.kernel_size,
                                               gate=self.gate)
        self.conv = conv(1, p.kernel_size, padding=p.padding, use_bias=False, dtype=self.dtype,
                         param_dtype=self.param_dtype, precision=self.precision,
                         conv_general_dilated=conv_general_dilated)
        self.bn = batch_norm(momentum=p.norm_momentum, dtype=self.dtype,
                             param_dtype=self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: BatchNorm mode. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("SpatialGate", "x", x, p.channels)
        return call_and_sow(
            self, F.cbam_spatial_gate, x, conv=self.conv,
            norm=partial(self.bn, use_running_average=not train), gate=p.gate,
        )


class CBAM(nn.Module):
    """Convolutional block attention module (Woo et al., ECCV 2018), linen.

    Input (..., H, W, C) -> output (..., H, W, C): ``channel`` (a ``ChannelGate``: ``fc1``, ``fc2``)
    then ``spatial`` (a ``SpatialGate``: ``conv``, ``bn``), in series.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``channel_weights`` (N, 1, 1, C), the channel gate Mc, and ``spatial_map`` (N, H, W, 1), the
    spatial gate Ms computed on ``x * Mc`` (both sown by CBAM itself, not under
    ``channel``/``spatial``).

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics). ``train=False``
    (default) normalises with the running statistics; ``train=True`` with the batch's, updating
    the running ones: ``apply(v, x, train=True, mutable=["batch_stats"])``.
    """

    channels: int
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    bias: bool = False
    kernel_size: int = 7
    act: Activation = "relu"
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        self.plan = CBAMPlan.create(
            self.channels, rd_ratio=self.rd_ratio, rd_channels=self.rd_channels,
            rd_divisor=self.rd_divisor, bias=self.bias, kernel_size=self.kernel_size,
            act=self.act, gate=self.gate)
        common = dict(gate=self.gate, dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision)
        self.channel = ChannelGate(self.channels, rd_ratio=self.rd_ratio,
                                   rd_channels=self.rd_channels, rd_divisor=self.rd_divisor,
                                   bias=self.bias, act=self.act, **common)
        self.spatial = SpatialGate(self.channels, kernel_size=self.kernel_size, **common)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: BatchNorm mode. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("CBAM", "x", x, p.channels)
        return call_and_sow(
            self, F.cbam, x, reduce=self.channel.fc1, expand=self.channel.fc2,
            conv=self.spatial.conv, norm=partial(self.spatial.bn, use_running_average=not train),
            act=p.act, gate=p.gate,
        )


class BAM(nn.Module):
    """Bottleneck attention module (Park et al., BMVC 2018), linen.

    Input (..., H, W, C) -> output (..., H, W, C). Channel branch: ``fc1`` (Dense C -> R), ``bn1``,
    ``fc2`` (Dense R -> C). Spatial branch: ``conv_reduce`` (1x1 C -> R), ``bn_reduce``,
    ``conv_di_0``/``bn_di_0`` and ``conv_di_1``/``bn_di_1`` (3x3, dilation ``dilation``),
    ``conv_final`` (1x1 R -> 1); all with bias, as the official code. ``combine="paper"``:
    ``x * (1 + sigmoid(Mc + Ms))``; ``"official"``: ``x * (1 + sigmoid(Mc * Ms))``.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``channel_logits`` (N, 1, 1, C), Mc; ``spatial_logits`` (N, H, W, 1), Ms; ``attention_map``
    (N, H, W, C), ``gate(Mc + Ms)`` (``combine="official"``: ``gate(Mc * Ms)``), so that the
    output is ``x * (1 + attention_map)``.

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics). ``train=False``
    (default) normalises with the running statistics; ``train=True`` with the batch's, updating
    the running ones: ``apply(v, x, train=True, mutable=["batch_stats"])``.
    """

    channels: int
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    dilation: int = 4
    combine: str = "paper"
    act: Activation = "relu"
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = BAMPlan.create(
            self.channels, rd_ratio=self.rd_ratio, rd_channels=self.rd_channels,
            rd_divisor=self.rd_divisor, dilation=self.dilation, combine=self.combine,
            act=self.act, gate=self.gate)
        c, rd, d = p.channels, p.rd_channels, p.dilation
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dense = partial(nn.Dense, precision=self.precision, **common)
        conv_ = partial(conv, precision=self.precision, **common)
        bn = partial(batch_norm, **common)
        self.fc1, self.bn1, self.fc2 = dense(rd), bn(), dense(c)
        self.conv_reduce, self.bn_reduce = conv_(rd, 1), bn()
        di = partial(conv_, rd, 3, padding=d, kernel_dilation=d,
                     conv_general_dilated=conv_general_dilated)
        self.conv_di_0, self.bn_di_0 = di(), bn()
        self.conv_di_1, self.bn_di_1 = di(), bn()
        self.conv_final = conv_(1, 1)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: BatchNorm mode. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("BAM", "x", x, p.channels)
        mode = dict(use_running_average=not train)
        return call_and_sow(
            self, F.bam, x, fc1=self.fc1, bn1=partial(self.bn1, **mode), fc2=self.fc2,
            conv_reduce=self.conv_reduce, bn_reduce=partial(self.bn_reduce, **mode),
            convs_di=(self.conv_di_0, self.conv_di_1),
            bns_di=(partial(self.bn_di_0, **mode), partial(self.bn_di_1, **mode)),
            conv_final=self.conv_final, act=p.act, gate=p.gate, combine=p.combine,
        )


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021), linen.

    Input (..., H, W, C) -> output (..., H, W, C). Parameters (official names): ``conv1`` (1x1
    C -> R, bias), ``bn1`` (BatchNorm), ``conv_h`` and ``conv_w`` (1x1 R -> C, bias). The
    official code uses ``act`` h-swish (``act="hard_swish"``) and width ``max(8, C // 32)``;
    the defaults here are the family's (``act="relu"``, ``rd_ratio=1/16``, ``rd_divisor=8``),
    and ``rd_ratio=1/32`` reproduces the official width whenever C <= 256 or C % 256 == 0.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``height_weights`` (N, H, 1, C), one gate per row, and ``width_weights`` (N, 1, W, C), one
    gate per column; the output is ``x * height_weights * width_weights``.

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics). ``train=False``
    (default) normalises with the running statistics; ``train=True`` with the batch's, updating
    the running ones: ``apply(v, x, train=True, mutable=["batch_stats"])``.
    """

    channels: int
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    act: Activation = "relu"
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = CoordinateAttentionPlan.create(
            self.channels, rd_ratio=self.rd_ratio, rd_channels=self.rd_channels,
            rd_divisor=self.rd_divisor, act=self.act, gate=self.gate)
        conv1x1 = partial(conv, kernel_size=1, dtype=self.dtype, param_dtype=self.param_dtype,
                          precision=self.precision)
        self.conv1 = conv1x1(p.rd_channels)
        self.bn1 = batch_norm(dtype=self.dtype, param_dtype=self.param_dtype)
        self.conv_h = conv1x1(p.channels)
        self.conv_w = conv1x1(p.channels)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: BatchNorm mode. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("CoordinateAttention", "x", x, p.channels)
        return call_and_sow(
            self, F.coordinate_attention, x, conv1=self.conv1,
            norm=partial(self.bn1, use_running_average=not train), conv_h=self.conv_h,
            conv_w=self.conv_w, act=p.act, gate=p.gate,
        )
