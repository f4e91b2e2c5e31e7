"""Plans of the channel attention mechanisms (SE, ECA, gather-excite, GCNet, SOCA).

A plan is what a mechanism derives from its options, computed once below both wrappers: the
validated options and the widths and kernel sizes of its layers. The linen and nnx modules build
their layers from it and pass its options to the one functional forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from attention_jax import functional as F
from attention_jax._types import Activation
from attention_jax._validation import (
    check_bool,
    check_odd,
    check_positive_int,
    check_power_of_two,
    fail,
)
from attention_jax.plans._common import (
    check_act,
    check_channels,
    check_gate,
    errors_named,
    same_padding,
)

__all__ = [
    "SqueezeExcitePlan",
    "EfficientChannelAttentionPlan",
    "GatherConv",
    "GatherExcitePlan",
    "GlobalContextPlan",
    "SecondOrderChannelPlan",
]


@dataclass(frozen=True)
class SqueezeExcitePlan:
    """Squeeze-and-excitation: ``fc1`` (1x1, channels -> rd_channels), ``fc2`` (back).

    Fields: ``channels`` C, ``rd_channels`` the resolved bottleneck width R
    (``F.reduced_channels``), ``add_maxpool``, ``bias``, ``act``, ``gate``.
    """

    channels: int
    rd_channels: int
    add_maxpool: bool
    bias: bool
    act: Activation
    gate: Activation

    @classmethod
    def create(
        cls, channels: int, *, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
        rd_divisor: int = 8, add_maxpool: bool = False, bias: bool = True,
        act: Activation = "relu", gate: Activation = "sigmoid", fn: str = "SqueezeExcite",
    ) -> SqueezeExcitePlan:
        """Validate the options (errors name ``fn``) and derive R. Returns the plan."""
        c = check_channels(fn, channels)
        rd = F.reduced_channels(fn, c, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                rd_divisor=rd_divisor)
        check_act(fn, act)
        check_gate(fn, gate)
        return cls(c, rd, add_maxpool, bias, act, gate)


@dataclass(frozen=True)
class EfficientChannelAttentionPlan:
    """ECA: one 1D conv over channels, kernel ``kernel_size`` k (odd), ``padding`` (k-1)/2.

    Fields: ``channels``, ``kernel_size`` (given, or ``F.eca_kernel_size(C, gamma, beta)``),
    ``padding``, ``gate``.
    """

    channels: int
    kernel_size: int
    padding: int
    gate: Activation

    @classmethod
    def create(
        cls, channels: int, *, kernel_size: int | None = None, gamma: float = 2.0,
        beta: float = 1.0, gate: Activation = "sigmoid", fn: str = "EfficientChannelAttention",
    ) -> EfficientChannelAttentionPlan:
        """Validate the options (errors name ``fn``) and derive k. Returns the plan."""
        c = check_channels(fn, channels)
        if kernel_size is None:
            with errors_named(fn):
                k = F.eca_kernel_size(c, gamma=gamma, beta=beta)
        else:
            check_odd(fn, "kernel_size", kernel_size)
            k = int(kernel_size)
        check_gate(fn, gate)
        return cls(c, k, same_padding(k), gate)


@dataclass(frozen=True)
class GatherConv:
    """One depthwise conv of gather-excite's parameterised gather (kernel, stride, padding)."""

    kernel_size: tuple[int, int]
    stride: int
    padding: int


@dataclass(frozen=True)
class GatherExcitePlan:
    """Gather-excite: optional gather convs (``conv{i}``/``norm{i}``), optional MLP.

    Fields: ``channels``, ``extent``, ``gather_convs`` (one ``GatherConv`` per ``conv{i}``:
    log2(extent) 3x3 stride-2 convs with padding 1, or for ``extent=0`` one ``feat_size``
    conv without padding; empty without ``extra_params``), ``use_mlp``, ``rd_channels`` (the
    MLP width, None without ``use_mlp``), ``act``, ``gate``.
    """

    channels: int
    extent: int
    gather_convs: tuple[GatherConv, ...]
    use_mlp: bool
    rd_channels: int | None
    act: Activation
    gate: Activation

    @classmethod
    def create(
        cls, channels: int, *, extent: int = 0, extra_params: bool = False,
        feat_size: int | tuple[int, int] | None = None, use_mlp: bool = True,
        rd_ratio: float = 1.0 / 16, rd_channels: int | None = None, rd_divisor: int = 8,
        act: Activation = "relu", gate: Activation = "sigmoid", fn: str = "GatherExcite",
    ) -> GatherExcitePlan:
        """Validate the options (errors name ``fn``) and derive the convs. Returns the plan."""
        c = check_channels(fn, channels)
        check_power_of_two(fn, "extent", extent, zero="global")
        extent = int(extent)
        convs: tuple[GatherConv, ...] = ()
        if extra_params and extent > 0:
            convs = (GatherConv((3, 3), 2, 1),) * (extent.bit_length() - 1)
        elif extra_params:
            if feat_size is None:
                raise fail(fn, "feat_size", "the input's (H, W) when extra_params=True and "
                           "extent=0", "None")
            size = (feat_size, feat_size) if isinstance(feat_size, int) else tuple(feat_size)
            if len(size) != 2:
                raise fail(fn, "feat_size", "an int or a pair (H, W)", repr(feat_size))
            for v in size:
                check_positive_int(fn, "feat_size", v)
            convs = (GatherConv((int(size[0]), int(size[1])), 1, 0),)
        rd = None
        if use_mlp:
            rd = F.reduced_channels(fn, c, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                    rd_divisor=rd_divisor)
        check_act(fn, act)
        check_gate(fn, gate)
        return cls(c, extent, convs, bool(use_mlp), rd, act, gate)


@dataclass(frozen=True)
class GlobalContextPlan:
    """GCNet: ``conv_attn`` (1x1 C -> 1) and the add and/or scale transforms (C -> R -> C).

    Fields: ``channels``, ``fuse_add``, ``fuse_scale`` (at least one True), ``rd_channels`` R,
    ``act``, ``gate``, ``eps`` (the LayerNorms' epsilon: 1e-5 as the official code, timm
    1e-6), ``attn_bias`` (``conv_attn`` has a bias; it cancels in the softmax, timm keeps it).
    """

    channels: int
    fuse_add: bool
    fuse_scale: bool
    rd_channels: int
    act: Activation
    gate: Activation
    eps: float = 1e-5
    attn_bias: bool = False

    @classmethod
    def create(
        cls, channels: int, *, fuse_add: bool = True, fuse_scale: bool = False,
        rd_ratio: float = 1.0 / 16, rd_channels: int | None = None, rd_divisor: int = 8,
        eps: float = 1e-5, attn_bias: bool = False, act: Activation = "relu",
        gate: Activation = "sigmoid", fn: str = "GlobalContext",
    ) -> GlobalContextPlan:
        """Validate the options (errors name ``fn``) and derive R. Returns the plan."""
        c = check_channels(fn, channels)
        if not (fuse_add or fuse_scale):
            raise fail(fn, "fuse_add / fuse_scale", "at least one True", "both False")
        if (isinstance(eps, bool) or not isinstance(eps, (int, float))
                or not 0 < eps < float("inf")):
            raise fail(fn, "eps", "a finite number > 0", repr(eps))
        check_bool(fn, "attn_bias", attn_bias)
        rd = F.reduced_channels(fn, c, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                rd_divisor=rd_divisor)
        check_act(fn, act)
        check_gate(fn, gate)
        return cls(c, bool(fuse_add), bool(fuse_scale), rd, act, gate, float(eps),
                   bool(attn_bias))


@dataclass(frozen=True)
class SecondOrderChannelPlan:
    """SOCA: ``fc1`` (1x1 C -> R), ``fc2`` (R -> C) on the covariance square root.

    Fields: ``channels``, ``iterations`` (Newton-Schulz steps >= 1), ``rd_channels`` R, ``act``,
    ``gate``.
    """

    channels: int
    iterations: int
    rd_channels: int
    act: Activation
    gate: Activation

    @classmethod
    def create(
        cls, channels: int, *, iterations: int = 5, rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None, rd_divisor: int = 8, act: Activation = "relu",
        gate: Activation = "sigmoid", fn: str = "SecondOrderChannel",
    ) -> SecondOrderChannelPlan:
        """Validate the options (errors name ``fn``) and derive R. Returns the plan."""
        c = check_channels(fn, channels)
        check_positive_int(fn, "iterations", iterations)
        rd = F.reduced_channels(fn, c, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                rd_divisor=rd_divisor)
        check_act(fn, act)
        check_gate(fn, gate)
        return cls(c, int(iterations), rd, act, gate)
