"""Hybrid (channel + spatial) attention as Flax nnx modules: CBAM, BAM, coordinate attention."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_choice, check_nhwc, check_odd, check_positive_int
from attention_jax.functional.convolution import conv_general_dilated

__all__ = ["ChannelGate", "SpatialGate", "CBAM", "BAM", "CoordinateAttention"]

# Flax's BatchNorm momentum is PyTorch's 1 - momentum. The official CBAM code uses torch
# momentum 0.01 in its spatial gate; BAM and coordinate attention use torch's default 0.1.
_CBAM_BN_MOMENTUM = 0.99
_BN_MOMENTUM = 0.9


class ChannelGate(nnx.Module):
    """CBAM channel attention (Woo et al., ECCV 2018), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Same parameters as the linen module: ``fc1``
    (1x1 conv C -> R) and ``fc2`` (1x1 conv R -> C), no bias by default.
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
        rd = F.reduced_channels("ChannelGate", channels, rd_ratio=rd_ratio,
                                rd_channels=rd_channels, rd_divisor=rd_divisor)
        conv = partial(nnx.Conv, kernel_size=(1, 1), use_bias=bias, dtype=dtype,
                       param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.channels, self.act, self.gate = channels, act, gate
        self.fc1 = conv(channels, rd)
        self.fc2 = conv(rd, channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("ChannelGate", "x", x, self.channels)
        return F.cbam_channel_gate(x, reduce=self.fc1, expand=self.fc2, act=self.act,
                                   gate=self.gate)


class SpatialGate(nnx.Module):
    """CBAM spatial attention (Woo et al., ECCV 2018), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Same parameters as the linen module: ``conv``
    (k x k, 2 -> 1, no bias) and ``bn`` (BatchNorm, torch momentum 0.01 as officially).
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
        fn = "SpatialGate"
        check_positive_int(fn, "channels", channels)
        check_odd(fn, "kernel_size", kernel_size)
        k, p = kernel_size, kernel_size // 2
        self.channels, self.gate = channels, gate
        self.conv = nnx.Conv(2, 1, kernel_size=(k, k), padding=((p, p), (p, p)), use_bias=False,
                             dtype=dtype, param_dtype=param_dtype, precision=precision,
                             rngs=rngs, conv_general_dilated=conv_general_dilated)
        self.bn = nnx.BatchNorm(1, momentum=_CBAM_BN_MOMENTUM, epsilon=1e-5, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("SpatialGate", "x", x, self.channels)
        return F.cbam_spatial_gate(x, conv=self.conv, norm=self.bn, gate=self.gate)


class CBAM(nnx.Module):
    """Convolutional block attention module (Woo et al., ECCV 2018), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Same parameters as the linen module: ``channel``
    (``ChannelGate``: ``fc1``, ``fc2``) then ``spatial`` (``SpatialGate``: ``conv``, ``bn``).
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
        common = dict(gate=gate, dtype=dtype, param_dtype=param_dtype, precision=precision,
                      rngs=rngs)
        self.channels, self.act, self.gate = channels, act, gate
        self.channel = ChannelGate(channels, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                   rd_divisor=rd_divisor, bias=bias, act=act, **common)
        self.spatial = SpatialGate(channels, kernel_size=kernel_size, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("CBAM", "x", x, self.channels)
        return F.cbam(x, reduce=self.channel.fc1, expand=self.channel.fc2,
                      conv=self.spatial.conv, norm=self.spatial.bn, act=self.act,
                      gate=self.gate)


class BAM(nnx.Module):
    """Bottleneck attention module (Park et al., BMVC 2018), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Same parameters as the linen module: ``fc1``,
    ``bn1``, ``fc2``; ``conv_reduce``, ``bn_reduce``, ``conv_di_0``, ``bn_di_0``, ``conv_di_1``,
    ``bn_di_1``, ``conv_final``. ``combine`` is ``"paper"`` (sum) or ``"official"`` (product).
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
        fn = "BAM"
        check_choice(fn, "combine", combine, F.BAM_COMBINES)
        check_positive_int(fn, "dilation", dilation)
        rd = F.reduced_channels(fn, channels, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                rd_divisor=rd_divisor)
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        dense = partial(nnx.Linear, precision=precision, **common)
        conv = partial(nnx.Conv, precision=precision, **common)
        bn = partial(nnx.BatchNorm, rd, momentum=_BN_MOMENTUM, epsilon=1e-5, **common)
        d = dilation
        self.channels, self.combine, self.act, self.gate = channels, combine, act, gate
        self.fc1, self.bn1, self.fc2 = dense(channels, rd), bn(), dense(rd, channels)
        self.conv_reduce, self.bn_reduce = conv(channels, rd, kernel_size=(1, 1)), bn()
        di = partial(conv, rd, rd, kernel_size=(3, 3), padding=((d, d), (d, d)),
                     kernel_dilation=(d, d),
                     conv_general_dilated=conv_general_dilated)
        self.conv_di_0, self.bn_di_0 = di(), bn()
        self.conv_di_1, self.bn_di_1 = di(), bn()
        self.conv_final = conv(rd, 1, kernel_size=(1, 1))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("BAM", "x", x, self.channels)
        return F.bam(
            x, fc1=self.fc1, bn1=self.bn1, fc2=self.fc2, conv_reduce=self.conv_reduce,
            bn_reduce=self.bn_reduce, convs_di=(self.conv_di_0, self.conv_di_1),
            bns_di=(self.bn_di_0, self.bn_di_1), conv_final=self.conv_final, act=self.act,
            gate=self.gate, combine=self.combine,
        )


class CoordinateAttention(nnx.Module):
    """Coordinate attention (Hou et al., CVPR 2021), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Same parameters as the linen module: ``conv1``,
    ``bn1``, ``conv_h``, ``conv_w`` (official names). Official: ``act="hard_swish"``,
    ``rd_ratio=1/32``; defaults here are the family's (``"relu"``, 1/16).
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
        rd = F.reduced_channels("CoordinateAttention", channels, rd_ratio=rd_ratio,
                                rd_channels=rd_channels, rd_divisor=rd_divisor)
        conv = partial(nnx.Conv, kernel_size=(1, 1), dtype=dtype, param_dtype=param_dtype,
                       precision=precision, rngs=rngs)
        self.channels, self.act, self.gate = channels, act, gate
        self.conv1 = conv(channels, rd)
        self.bn1 = nnx.BatchNorm(rd, momentum=_BN_MOMENTUM, epsilon=1e-5, dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)
        self.conv_h = conv(rd, channels)
        self.conv_w = conv(rd, channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("CoordinateAttention", "x", x, self.channels)
        return F.coordinate_attention(x, conv1=self.conv1, norm=self.bn1, conv_h=self.conv_h,
                                      conv_w=self.conv_w, act=self.act, gate=self.gate)
