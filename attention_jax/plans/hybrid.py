"""Plans of the hybrid (channel + spatial) mechanisms: CBAM and its gates, BAM, coordinate
attention. See ``attention_jax.plans`` for what a plan is."""

from __future__ import annotations

from dataclasses import dataclass

from attention_jax import functional as F
from attention_jax._types import Activation
from attention_jax._validation import check_choice, check_odd, check_positive_int
from attention_jax.plans._common import check_act, check_channels, check_gate, same_padding

__all__ = [
    "ChannelGatePlan",
    "SpatialGatePlan",
    "CBAMPlan",
    "BAMPlan",
    "CoordinateAttentionPlan",
]


@dataclass(frozen=True)
class ChannelGatePlan:
    """CBAM's channel gate: the shared MLP ``fc1`` (1x1 C -> R), ``fc2`` (R -> C).

    Fields: ``channels``, ``rd_channels`` R, ``bias``, ``act``, ``gate``.
    """

    channels: int
    rd_channels: int
    bias: bool
    act: Activation
    gate: Activation

    @classmethod
    def create(
        cls, channels: int, *, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
        rd_divisor: int = 8, bias: bool = False, act: Activation = "relu",
        gate: Activation = "sigmoid", fn: str = "ChannelGate",
    ) -> ChannelGatePlan:
        """Validate the options (errors name ``fn``) and derive R. Returns the plan."""
        c = check_channels(fn, channels)
        rd = F.reduced_channels(fn, c, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                rd_divisor=rd_divisor)
        check_act(fn, act)
        check_gate(fn, gate)
        return cls(c, rd, bias, act, gate)


@dataclass(frozen=True)
class SpatialGatePlan:
    """CBAM's spatial gate: ``conv`` (k x k, 2 -> 1, no bias, padding k // 2) and ``bn``.

    Fields: ``channels``, ``kernel_size`` k (odd), ``padding``, ``gate``, ``norm_momentum``
    (Flax's convention: the official CBAM code uses torch momentum 0.01 here, i.e. 0.99).
    """

    channels: int
    kernel_size: int
    padding: int
    gate: Activation
    norm_momentum: float = 0.99

    @classmethod
    def create(
        cls, channels: int, *, kernel_size: int = 7, gate: Activation = "sigmoid",
        fn: str = "SpatialGate",
    ) -> SpatialGatePlan:
        """Validate the options (errors name ``fn``). Returns the plan."""
        c = check_channels(fn, channels)
        check_odd(fn, "kernel_size", kernel_size)
        check_gate(fn, gate)
        return cls(c, int(kernel_size), same_padding(kernel_size), gate)


@dataclass(frozen=True)
class CBAMPlan:
    """CBAM: a ``ChannelGatePlan`` (``channel``) then a ``SpatialGatePlan`` (``spatial``).

    Fields: ``channels``, ``channel``, ``spatial``, ``act``, ``gate``.
    """

    channels: int
    channel: ChannelGatePlan
    spatial: SpatialGatePlan
    act: Activation
    gate: Activation

    @classmethod
    def create(
        cls, channels: int, *, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
        rd_divisor: int = 8, bias: bool = False, kernel_size: int = 7, act: Activation = "relu",
        gate: Activation = "sigmoid", fn: str = "CBAM",
    ) -> CBAMPlan:
        """Validate the options (errors name ``fn``, also the gates'). Returns the plan."""
        c = check_channels(fn, channels)
        channel = ChannelGatePlan.create(c, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                         rd_divisor=rd_divisor, bias=bias, act=act, gate=gate,
                                         fn=fn)
        spatial = SpatialGatePlan.create(c, kernel_size=kernel_size, gate=gate, fn=fn)
        return cls(c, channel, spatial, act, gate)


@dataclass(frozen=True)
class BAMPlan:
    """BAM: channel branch (Dense C -> R -> C) and spatial branch (1x1 C -> R, two dilated
    3x3 R -> R with padding ``dilation``, 1x1 R -> 1), each with BatchNorm.

    Fields: ``channels``, ``rd_channels`` R, ``dilation``, ``combine`` (one of
    ``F.BAM_COMBINES``), ``act``, ``gate``.
    """

    channels: int
    rd_channels: int
    dilation: int
    combine: str
    act: Activation
    gate: Activation

    @classmethod
    def create(
        cls, channels: int, *, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
        rd_divisor: int = 8, dilation: int = 4, combine: str = "paper",
        act: Activation = "relu", gate: Activation = "sigmoid", fn: str = "BAM",
    ) -> BAMPlan:
        """Validate the options (errors name ``fn``) and derive R. Returns the plan."""
        c = check_channels(fn, channels)
        check_choice(fn, "combine", combine, F.BAM_COMBINES)
        check_positive_int(fn, "dilation", dilation)
        rd = F.reduced_channels(fn, c, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                rd_divisor=rd_divisor)
        check_act(fn, act)
        check_gate(fn, gate)
        return cls(c, rd, int(dilation), combine, act, gate)


@dataclass(frozen=True)
class CoordinateAttentionPlan:
    """Coordinate attention: ``conv1`` (1x1 C -> R), ``bn1``, ``conv_h``/``conv_w`` (R -> C).

    Fields: ``channels``, ``rd_channels`` R, ``act``, ``gate``.
    """

    channels: int
    rd_channels: int
    act: Activation
    gate: Activation

    @classmethod
    def create(
        cls, channels: int, *, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
        rd_divisor: int = 8, act: Activation = "relu", gate: Activation = "sigmoid",
        fn: str = "CoordinateAttention",
    ) -> CoordinateAttentionPlan:
        """Validate the options (errors name ``fn``) and derive R. Returns the plan."""
        c = check_channels(fn, channels)
        rd = F.reduced_channels(fn, c, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                rd_divisor=rd_divisor)
        check_act(fn, act)
        check_gate(fn, gate)
        return cls(c, rd, act, gate)
