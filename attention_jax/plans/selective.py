"""Plans of the selective mechanisms (SK-Net, ResNeSt split attention).

See ``attention_jax.plans`` for what a plan is.
"""

from __future__ import annotations

from dataclasses import dataclass

from attention_jax import functional as F
from attention_jax._types import Activation
from attention_jax._validation import check_bool, check_divides, check_odd, check_positive_int
from attention_jax.plans._common import (
    check_act,
    check_channels,
    check_optional_channels,
    same_padding,
)

__all__ = ["SelectiveKernelPlan", "SplitAttentionPlan"]


@dataclass(frozen=True)
class SelectiveKernelPlan:
    """Selective kernel: M branches ``conv{m}`` (3x3, dilation m + 1, padding m + 1, grouped),
    ``fc_reduce`` (1x1 out -> d), ``fc_select`` (1x1 d -> M * out).

    Fields: ``channels``, ``out_channels`` (resolved), ``num_paths`` M, ``groups`` G,
    ``stride``, ``rd_channels`` the attention width d (``rd_channels`` if given, else
    ``max(reduced_channels(out), rd_min_channels)``), ``dilations`` (per branch), ``act``,
    ``split_input`` (branch m convolves the m-th of M channel slices, timm's SK-ResNet-18/34),
    ``branch_channels`` (each branch conv's input width: C, or C / M with ``split_input``).
    """

    channels: int
    out_channels: int
    num_paths: int
    groups: int
    stride: int
    rd_channels: int
    dilations: tuple[int, ...]
    act: Activation
    split_input: bool = False
    branch_channels: int = 0

    @classmethod
    def create(
        cls, channels: int, *, out_channels: int | None = None, num_paths: int = 2,
        groups: int = 1, stride: int = 1, rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None, rd_divisor: int = 8, rd_min_channels: int = 32,
        split_input: bool = False, act: Activation = "relu", fn: str = "SelectiveKernel",
    ) -> SelectiveKernelPlan:
        """Validate the options (errors name ``fn``) and derive the widths. Returns the plan."""
        c = check_channels(fn, channels)
        out = check_optional_channels(fn, "out_channels", out_channels) or c
        check_positive_int(fn, "num_paths", num_paths)
        check_positive_int(fn, "groups", groups)
        check_positive_int(fn, "stride", stride)
        check_bool(fn, "split_input", split_input)
        branch_in = c
        if split_input:
            check_divides(fn, "channels", c, "num_paths (split_input)", num_paths)
            branch_in = c // num_paths
        check_divides(fn, "channels / num_paths" if split_input else "channels", branch_in,
                      "groups", groups)
        check_divides(fn, "out_channels", out, "groups", groups)
        check_positive_int(fn, "rd_min_channels", rd_min_channels)
        rd = F.reduced_channels(fn, out, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                rd_divisor=rd_divisor)
        if rd_channels is None:
            rd = max(rd, int(rd_min_channels))
        dilations = tuple(m + 1 for m in range(num_paths))
        check_act(fn, act)
        return cls(c, out, int(num_paths), int(groups), int(stride), rd, dilations, act,
                   bool(split_input), branch_in)


@dataclass(frozen=True)
class SplitAttentionPlan:
    """ResNeSt split attention: ``conv`` (k x k, grouped by groups * radix, C -> radix * out),
    ``fc1`` (1x1 grouped, out -> d), ``fc2`` (1x1 grouped, d -> radix * out).

    Fields: ``channels``, ``out_channels`` (resolved), ``kernel_size``, ``stride``,
    ``dilation``, ``padding`` (``dilation * (k - 1) // 2``), ``groups`` (cardinality),
    ``radix``, ``rd_channels`` the attention width d (``rd_channels`` if given, else
    ``max(reduced_channels(C * radix), rd_min_channels)``, divisible by groups), ``bias``,
    ``act``.
    """

    channels: int
    out_channels: int
    kernel_size: int
    stride: int
    dilation: int
    padding: int
    groups: int
    radix: int
    rd_channels: int
    bias: bool
    act: Activation

    @classmethod
    def create(
        cls, channels: int, *, out_channels: int | None = None, kernel_size: int = 3,
        stride: int = 1, dilation: int = 1, groups: int = 1, radix: int = 2,
        rd_ratio: float = 1.0 / 16, rd_channels: int | None = None, rd_divisor: int = 8,
        rd_min_channels: int = 32, bias: bool = False, act: Activation = "relu",
        fn: str = "SplitAttention",
    ) -> SplitAttentionPlan:
        """Validate the options (errors name ``fn``) and derive the widths. Returns the plan."""
        c = check_channels(fn, channels)
        out = check_optional_channels(fn, "out_channels", out_channels) or c
        check_odd(fn, "kernel_size", kernel_size)
        check_positive_int(fn, "stride", stride)
        check_positive_int(fn, "dilation", dilation)
        check_positive_int(fn, "groups", groups)
        check_positive_int(fn, "radix", radix)
        check_divides(fn, "channels", c, "groups * radix", groups * radix)
        check_divides(fn, "out_channels", out, "groups", groups)
        check_positive_int(fn, "rd_min_channels", rd_min_channels)
        rd = F.reduced_channels(fn, c * radix, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                rd_divisor=rd_divisor)
        if rd_channels is None:
            rd = max(rd, int(rd_min_channels))
        check_divides(fn, "rd_channels (attention width)", rd, "groups", groups)
        check_act(fn, act)
        return cls(c, out, int(kernel_size), int(stride), int(dilation),
                   same_padding(kernel_size, dilation), int(groups), int(radix), rd, bias, act)
