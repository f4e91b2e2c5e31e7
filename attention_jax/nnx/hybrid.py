"""Hybrid (channel + spatial) attention as Flax nnx modules: CBAM, BAM, coordinate attention."""

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
from attention_jax.plans import (
    BAMPlan,
    CBAMPlan,
    ChannelGatePlan,
    CoordinateAttentionPlan,
    SpatialGatePlan,
)

__all__ = ["ChannelGate", "SpatialGate", "CBAM", "BAM", "CoordinateAttention"]


class ChannelGate(nnx.Module):
    """CBAM channel attention (Woo et al., ECCV 2018), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Same parameters as the linen module: ``fc1``
    (1x1 conv C -> R) and ``fc2`` (1x1 conv R -> C), no bias by default.

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``channel_weights``
    (N, 1, 1, C), the gate Mc that multiplies ``x``.

    Variables: ``nnx.Param`` only (no batch statistics; ``train()``/``eval()`` change nothing).
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        bias: bool = False,
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        p = self.plan = ChannelGatePlan.create(
            channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
            bias=bias, act=act, gate=gate)
        conv1x1 = partial(conv, kernel_size=1, use_bias=p.bias, dtype=dtype,
                          param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.fc1 = conv1x1(p.channels, p.rd_channels)
        self.fc2 = conv1x1(p.rd_channels, p.channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("ChannelGate", "x", x, p.channels)
        return call_and_sow(
            self, F.cbam_channel_gate, x, reduce=self.fc1, expand=self.fc2, act=p.act, gate=p.gate,
        )


class SpatialGate(nnx.Module):
    """CBAM spatial attention (Woo et al., ECCV 2018), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Same parameters as the linen module: ``conv``
    (k x k, 2 -> 1, no bias) and ``bn`` (BatchNorm, torch momentum 0.01 as officially).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``spatial_map``
    (N, H, W, 1), the gate Ms that multiplies ``x``.

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics). A new module
    is in training mode (batch statistics, running ones updated in place); ``module.eval()``
    switches to the running statistics, ``module.train()`` back.
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        p = self.plan = SpatialGatePlan.create(channels, kernel_size=kernel_size, gate=gate)
        self.conv = conv(2, 1, p.kernel_size, padding=p.padding, use_bias=False, dtype=dtype,
                         param_dtype=param_dtype, precision=precision, rngs=rngs,
                         conv_general_dilated=conv_general_dilated)
        self.bn = batch_norm(1, momentum=p.norm_momentum, dtype=dtype, param_dtype=param_dtype,
                             rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("SpatialGate", "x", x, p.channels)
        return call_and_sow(self, F.cbam_spatial_gate, x, conv=self.conv, norm=self.bn, gate=p.gate)


class CBAM(nnx.Module):
    """Convolutional block attention module (Woo et al., ECCV 2018), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Same parameters as the linen module: ``channel``
    (``ChannelGate``: ``fc1``, ``fc2``) then ``spatial`` (``SpatialGate``: ``conv``, ``bn``).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``channel_weights``
    (N, 1, 1, C), the channel gate Mc, and ``spatial_map`` (N, H, W, 1), the spatial gate Ms
    computed on ``x * Mc`` (both sown by CBAM itself, not under ``channel``/``spatial``).

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics). A new module
    is in training mode (batch statistics, running ones updated in place); ``module.eval()``
    switches to the running statistics, ``module.train()`` back.
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        bias: bool = False,
        kernel_size: int = 7,
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        self.plan = CBAMPlan.create(
            channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
            bias=bias, kernel_size=kernel_size, act=act, gate=gate)
        common = dict(gate=gate, dtype=dtype, param_dtype=param_dtype, precision=precision,
                      rngs=rngs)
        self.channel = ChannelGate(channels, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                   rd_divisor=rd_divisor, bias=bias, act=act, **common)
        self.spatial = SpatialGate(channels, kernel_size=kernel_size, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("CBAM", "x", x, p.channels)
        return call_and_sow(
            self, F.cbam, x, reduce=self.channel.fc1, expand=self.channel.fc2,
            conv=self.spatial.conv, norm=self.spatial.bn, act=p.act, gate=p.gate,
        )


class BAM(nnx.Module):
    """Bottleneck attention module (Park et al., BMVC 2018), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Same parameters as the linen module: ``fc1``,
    ``bn1``, ``fc2``; ``conv_reduce``, ``bn_reduce``, ``conv_di_0``, ``bn_di_0``, ``conv_di_1``,
    ``bn_di_1``, ``conv_final``. ``combine`` is ``"paper"`` (sum) or ``"official"`` (product).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``channel_logits``
    (N, 1, 1, C), Mc; ``spatial_logits`` (N, H, W, 1), Ms; ``attention_map`` (N, H, W, C),
    ``gate(Mc + Ms)`` (``combine="official"``: ``gate(Mc * Ms)``), so that the output is
    ``x * (1 + attention_map)``.

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics). A new module
    is in training mode (batch statistics, running ones updated in place); ``module.eval()``
    switches to the running statistics, ``module.train()`` back.
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        dilation: int = 4,
        combine: str = "paper",
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        p = self.plan = BAMPlan.create(
            channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
            dilation=dilation, combine=combine, act=act, gate=gate)
        c, rd, d = p.channels, p.rd_channels, p.dilation
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        dense = partial(nnx.Linear, precision=precision, **common)
        conv_ = partial(conv, precision=precision, **common)
        bn = partial(batch_norm, rd, **common)
        self.fc1, self.bn1, self.fc2 = dense(c, rd), bn(), dense(rd, c)
        self.conv_reduce, self.bn_reduce = conv_(c, rd, 1), bn()
        di = partial(conv_, rd, rd, 3, padding=d, kernel_dilation=d,
                     conv_general_dilated=conv_general_dilated)
        self.conv_di_0, self.bn_di_0 = di(), bn()
        self.conv_di_1, self.bn_di_1 = di(), bn()
        self.conv_final = conv_(rd, 1, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("BAM", "x", x, p.channels)
        return call_and_sow(
            self, F.bam, x, fc1=self.fc1, bn1=self.bn1, fc2=self.fc2, conv_reduce=self.conv_reduce,
            bn_reduce=self.bn_reduce, convs_di=(self.conv_di_0, self.conv_di_1),
            bns_di=(self.bn_di_0, self.bn_di_1), conv_final=self.conv_final, act=p.act,
            gate=p.gate, combine=p.combine,
        )


class CoordinateAttention(nnx.Module):
    """Coordinate attention (Hou et al., CVPR 2021), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Same parameters as the linen module: ``conv1``,
    ``bn1``, ``conv_h``, ``conv_w`` (official names). Official: ``act="hard_swish"``,
    ``rd_ratio=1/32``; defaults here are the family's (``"relu"``, 1/16).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``height_weights``
    (N, H, 1, C), one gate per row, and ``width_weights`` (N, 1, W, C), one gate per column; the
    output is ``x * height_weights * width_weights``.

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics). A new module
    is in training mode (batch statistics, running ones updated in place); ``module.eval()``
    switches to the running statistics, ``module.train()`` back.
    """

    def __init__(
        self,
        channels: int,
        *,
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
        p = self.plan = CoordinateAttentionPlan.create(
            channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
            act=act, gate=gate)
        conv1x1 = partial(conv, kernel_size=1, dtype=dtype, param_dtype=param_dtype,
                          precision=precision, rngs=rngs)
        self.conv1 = conv1x1(p.channels, p.rd_channels)
        self.bn1 = batch_norm(p.rd_channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv_h = conv1x1(p.rd_channels, p.channels)
        self.conv_w = conv1x1(p.rd_channels, p.channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("CoordinateAttention", "x", x, p.channels)
        return call_and_sow(
            self, F.coordinate_attention, x, conv1=self.conv1, norm=self.bn1, conv_h=self.conv_h,
            conv_w=self.conv_w, act=p.act, gate=p.gate,
        )
