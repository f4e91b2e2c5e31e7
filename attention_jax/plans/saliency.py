"""Plans of PFANet's mechanisms (context-aware pyramid, spatial attention, saliency head).

See ``attention_jax.plans`` for what a plan is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attention_jax import functional as F
from attention_jax._types import Activation
from attention_jax._validation import check_divides, check_odd
from attention_jax.plans._common import (
    check_act,
    check_channels,
    check_gate,
    check_int_tuple,
    check_optional_channels,
    same_padding,
)

__all__ = ["ContextAwarePyramidPlan", "PyramidSpatialAttentionPlan", "PyramidFeatureAttentionPlan"]


@dataclass(frozen=True)
class ContextAwarePyramidPlan:
    """CPFE: ``conv0`` (1x1) and ``conv{i}`` (3x3, dilation = padding = ``dilations[i-1]``),
    each ``branch_channels`` wide, ``bn``; with ``channel_attention`` ``ca_fc1`` (1x1 out -> R)
    and ``ca_fc2`` (R -> out).

    Fields: ``channels``, ``out_channels`` (resolved, divisible by 1 + len(dilations)),
    ``dilations``, ``branch_channels``, ``channel_attention``, ``rd_channels`` R, ``act``,
    ``gate``.
    """

    channels: int
    out_channels: int
    dilations: tuple[int, ...]
    branch_channels: int
    channel_attention: bool
    rd_channels: int
    act: Activation
    gate: Activation

    @classmethod
    def create(
        cls, channels: int, *, out_channels: int | None = None,
        dilations: Sequence[int] = (3, 5, 7), channel_attention: bool = True,
        rd_ratio: float = 1.0 / 16, rd_channels: int | None = None, rd_divisor: int = 8,
        act: Activation = "relu", gate: Activation = "sigmoid", fn: str = "ContextAwarePyramid",
    ) -> ContextAwarePyramidPlan:
        """Validate the options (errors name ``fn``) and derive the widths. Returns the plan."""
        c = check_channels(fn, channels)
        out = check_optional_channels(fn, "out_channels", out_channels) or c
        dilations = check_int_tuple(fn, "dilations", dilations)
        branches = 1 + len(dilations)
        check_divides(fn, "out_channels", out, "1 + len(dilations)", branches)
        rd = F.reduced_channels(fn, out, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                rd_divisor=rd_divisor)
        check_act(fn, act)
        check_gate(fn, gate)
        return cls(c, out, dilations, out // branches, bool(channel_attention), rd, act, gate)


@dataclass(frozen=True)
class PyramidSpatialAttentionPlan:
    """PFANet's spatial attention: ``b1_conv1`` (1 x k, C -> mid), ``b1_conv2`` (k x 1,
    mid -> 1) and the mirrored ``b2_*``, each with BatchNorm.

    Fields: ``channels``, ``kernel_size`` k (odd), ``mid_channels`` (given, or C // 2 floored
    at 1), ``row_kernel`` (1, k) and ``row_padding`` (0, k // 2), ``col_kernel`` (k, 1) and
    ``col_padding`` (k // 2, 0), ``act``, ``gate``.
    """

    channels: int
    kernel_size: int
    mid_channels: int
    row_kernel: tuple[int, int]
    row_padding: tuple[int, int]
    col_kernel: tuple[int, int]
    col_padding: tuple[int, int]
    act: Activation
    gate: Activation

    @classmethod
    def create(
        cls, channels: int, *, kernel_size: int = 9, mid_channels: int | None = None,
        act: Activation = "relu", gate: Activation = "sigmoid",
        fn: str = "PyramidSpatialAttention",
    ) -> PyramidSpatialAttentionPlan:
        """Validate the options (errors name ``fn``) and derive the layers. Returns the plan."""
        c = check_channels(fn, channels)
        check_odd(fn, "kernel_size", kernel_size)
        k = int(kernel_size)
        mid = max(c // 2, 1) if mid_channels is None else check_channels(fn, mid_channels,
                                                                          "mid_channels")
        p = same_padding(k)
        check_act(fn, act)
        check_gate(fn, gate)
        return cls(c, k, mid, (1, k), (0, p), (k, 1), (p, 0), act, gate)


@dataclass(frozen=True)
class PyramidFeatureAttentionPlan:
    """PFANet's head: ``cpfe`` (a ``ContextAwarePyramidPlan`` on the high-level features),
    ``high_conv`` (1x1 -> mid), ``low_conv`` (3x3 -> mid), ``sa`` (a
    ``PyramidSpatialAttentionPlan`` on mid channels), ``head_conv`` (3x3, 2 mid -> 1).

    Fields: ``low_channels``, ``high_channels``, ``features`` (per pyramid branch),
    ``mid_channels``, ``pyramid_channels`` (``features * (1 + len(dilations))``), ``cpfe``,
    ``sa``, ``act``, ``gate``.
    """

    low_channels: int
    high_channels: int
    features: int
    mid_channels: int
    pyramid_channels: int
    cpfe: ContextAwarePyramidPlan
    sa: PyramidSpatialAttentionPlan
    act: Activation
    gate: Activation

    @classmethod
    def create(
        cls, low_channels: int, high_channels: int, *, features: int = 32,
        mid_channels: int = 64, dilations: Sequence[int] = (3, 5, 7), kernel_size: int = 9,
        rd_ratio: float = 1.0 / 16, rd_channels: int | None = None, rd_divisor: int = 8,
        act: Activation = "relu", gate: Activation = "sigmoid",
        fn: str = "PyramidFeatureAttention",
    ) -> PyramidFeatureAttentionPlan:
        """Validate the options (the sub-plans' errors name their modules). Returns the plan."""
        low = check_channels(fn, low_channels, "low_channels")
        high = check_channels(fn, high_channels, "high_channels")
        features = check_channels(fn, features, "features")
        mid = check_channels(fn, mid_channels, "mid_channels")
        pyramid = features * (1 + len(check_int_tuple(fn, "dilations", dilations)))
        cpfe = ContextAwarePyramidPlan.create(
            high, out_channels=pyramid, dilations=dilations, rd_ratio=rd_ratio,
            rd_channels=rd_channels, rd_divisor=rd_divisor, act=act)
        sa = PyramidSpatialAttentionPlan.create(mid, kernel_size=kernel_size, act=act)
        check_gate(fn, gate)
        return cls(low, high, features, mid, pyramid, cpfe, sa, act, gate)
