"""Hybrid (channel + spatial) attention as Flax linen modules: CBAM, BAM, coordinate attention."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_choice, check_nhwc, check_odd, check_positive_int
from attention_jax.functional.convolution import conv_general_dilated

__all__ = ["ChannelGate", "SpatialGate", "CBAM", "BAM", "CoordinateAttention"]

# Flax's BatchNorm momentum is PyTorch's 1 - momentum. The official CBAM code uses torch
# momentum 0.01 in its spatial gate; BAM and coordinate attention use torch's default 0.1.
_CBAM_BN_MOMENTUM = 0.99
_BN_MOMENTUM = 0.9


class ChannelGate(nn.Module):
    """CBAM channel attention (Woo et al., ECCV 2018), linen.

    Input (N, H, W, C) -> output (N, H, W, C). Parameters: ``fc1`` (1x1 conv C -> R) and ``fc2``
    (1x1 conv R -> C), the MLP shared by the avg- and max-pooled descriptors; no bias by default
    (as timm; the official code's ``nn.Linear`` has one: ``bias=True``).
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
        rd = F.reduced_channels("ChannelGate", self.channels, rd_ratio=self.rd_ratio,
                                rd_channels=self.rd_channels, rd_divisor=self.rd_divisor)
        conv = partial(nn.Conv, kernel_size=(1, 1), use_bias=self.bias, dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision)
        self.fc1 = conv(rd)
        self.fc2 = conv(self.channels)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns (N, H, W, C)."""
        check_nhwc("ChannelGate", "x", x, self.channels)
        return F.cbam_channel_gate(x, reduce=self.fc1, expand=self.fc2, act=self.act,
                                   gate=self.gate)


class SpatialGate(nn.Module):
    """CBAM spatial attention (Woo et al., ECCV 2018), linen.

    Input (N, H, W, C) -> output (N, H, W, C). Parameters: ``conv`` (k x k conv 2 -> 1, no bias,
    "same" padding; k = ``kernel_size``, odd) and ``bn`` (BatchNorm on the one-channel map, as in
    the official code, torch momentum 0.01).
    """

    channels: int
    kernel_size: int = 7
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        fn = "SpatialGate"
        check_positive_int(fn, "channels", self.channels)
        check_odd(fn, "kernel_size", self.kernel_size)
        k, p = self.kernel_size, self.kernel_size // 2
        self.conv = nn.Conv(1, kernel_size=(k, k), padding=((p, p), (p, p)), use_bias=False,
                            dtype=self.dtype, param_dtype=self.param_dtype,
                            precision=self.precision, conv_general_dilated=conv_general_dilated)
        self.bn = nn.BatchNorm(use_running_average=None, momentum=_CBAM_BN_MOMENTUM,
                               epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: BatchNorm mode. Returns (N, H, W, C)."""
        check_nhwc("SpatialGate", "x", x, self.channels)
        return F.cbam_spatial_gate(x, conv=self.conv,
                                   norm=partial(self.bn, use_running_average=not train),
                                   gate=self.gate)


class CBAM(nn.Module):
    """Convolutional block attention module (Woo et al., ECCV 2018), linen.

    Input (N, H, W, C) -> output (N, H, W, C): ``channel`` (a ``ChannelGate``: ``fc1``, ``fc2``)
    then ``spatial`` (a ``SpatialGate``: ``conv``, ``bn``), in series.
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
        common = dict(gate=self.gate, dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision)
        self.channel = ChannelGate(self.channels, rd_ratio=self.rd_ratio,
                                   rd_channels=self.rd_channels, rd_divisor=self.rd_divisor,
                                   bias=self.bias, act=self.act, **common)
        self.spatial = SpatialGate(self.channels, kernel_size=self.kernel_size, **common)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: BatchNorm mode. Returns (N, H, W, C)."""
        check_nhwc("CBAM", "x", x, self.channels)
        return F.cbam(x, reduce=self.channel.fc1, expand=self.channel.fc2,
                      conv=self.spatial.conv,
                      norm=partial(self.spatial.bn, use_running_average=not train),
                      act=self.act, gate=self.gate)


class BAM(nn.Module):
    """Bottleneck attention module (Park et al., BMVC 2018), linen.

    Input (N, H, W, C) -> output (N, H, W, C). Channel branch: ``fc1`` (Dense C -> R), ``bn1``,
    ``fc2`` (Dense R -> C). Spatial branch: ``conv_reduce`` (1x1 C -> R), ``bn_reduce``,
    ``conv_di_0``/``bn_di_0`` and ``conv_di_1``/``bn_di_1`` (3x3, dilation ``dilation``),
    ``conv_final`` (1x1 R -> 1); all with bias, as the official code. ``combine="paper"``:
    ``x * (1 + sigmoid(Mc + Ms))``; ``"official"``: ``x * (1 + sigmoid(Mc * Ms))``.
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
        fn = "BAM"
        check_choice(fn, "combine", self.combine, F.BAM_COMBINES)
        check_positive_int(fn, "dilation", self.dilation)
        rd = F.reduced_channels(fn, self.channels, rd_ratio=self.rd_ratio,
                                rd_channels=self.rd_channels, rd_divisor=self.rd_divisor)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dense = partial(nn.Dense, precision=self.precision, **common)
        conv = partial(nn.Conv, precision=self.precision, **common)
        bn = partial(nn.BatchNorm, use_running_average=None, momentum=_BN_MOMENTUM,
                     epsilon=1e-5, **common)
        d = self.dilation
        self.fc1, self.bn1, self.fc2 = dense(rd), bn(), dense(self.channels)
        self.conv_reduce, self.bn_reduce = conv(rd, kernel_size=(1, 1)), bn()
        di = partial(conv, rd, kernel_size=(3, 3), padding=((d, d), (d, d)),
                     kernel_dilation=(d, d),
                     conv_general_dilated=conv_general_dilated)
        self.conv_di_0, self.bn_di_0 = di(), bn()
        self.conv_di_1, self.bn_di_1 = di(), bn()
        self.conv_final = conv(1, kernel_size=(1, 1))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: BatchNorm mode. Returns (N, H, W, C)."""
        check_nhwc("BAM", "x", x, self.channels)
        mode = dict(use_running_average=not train)
        return F.bam(
            x, fc1=self.fc1, bn1=partial(self.bn1, **mode), fc2=self.fc2,
            conv_reduce=self.conv_reduce, bn_reduce=partial(self.bn_reduce, **mode),
            convs_di=(self.conv_di_0, self.conv_di_1),
            bns_di=(partial(self.bn_di_0, **mode), partial(self.bn_di_1, **mode)),
            conv_final=self.conv_final, act=self.act, gate=self.gate, combine=self.combine,
        )


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021), linen.

    Input (N, H, W, C) -> output (N, H, W, C). Parameters (official names): ``conv1`` (1x1
    C -> R, bias), ``bn1`` (BatchNorm), ``conv_h`` and ``conv_w`` (1x1 R -> C, bias). The
    official code uses ``act`` h-swish (``act="hard_swish"``) and width ``max(8, C // 32)``;
    the defaults here are the family's (``act="relu"``, ``rd_ratio=1/16``, ``rd_divisor=8``),
    and ``rd_ratio=1/32`` reproduces the official width whenever C <= 256 or C % 256 == 0.
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
        rd = F.reduced_channels("CoordinateAttention", self.channels, rd_ratio=self.rd_ratio,
                                rd_channels=self.rd_channels, rd_divisor=self.rd_divisor)
        conv = partial(nn.Conv, kernel_size=(1, 1), dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision)
        self.conv1 = conv(rd)
        self.bn1 = nn.BatchNorm(use_running_average=None, momentum=_BN_MOMENTUM, epsilon=1e-5,
                                dtype=self.dtype, param_dtype=self.param_dtype)
        self.conv_h = conv(self.channels)
        self.conv_w = conv(self.channels)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: BatchNorm mode. Returns (N, H, W, C)."""
        check_nhwc("CoordinateAttention", "x", x, self.channels)
        return F.coordinate_attention(
            x, conv1=self.conv1, norm=partial(self.bn1, use_running_average=not train),
            conv_h=self.conv_h, conv_w=self.conv_w, act=self.act, gate=self.gate,
        )
