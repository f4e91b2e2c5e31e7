"""ResNet backbones with pluggable attention (Flax linen); ``resnet_nnx`` is the nnx twin.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (torchvision layout:
stride on the 3x3 conv of the bottleneck, 1x1 conv + BN shortcut when the shape changes).
``attention=<registry name>`` puts ``create_attention(name, out_channels)`` where timm puts it:
after the block's last BatchNorm, before the residual add. ``spatial_conv`` swaps the block's
3x3 conv for SK-Net's ``SelectiveKernel`` (SK-ResNet / SKNet) or ResNeSt's ``SplitAttention``.
The linen and nnx models have one parameter tree (``conv1``, ``bn1``, ``layer{s}_{b}``, ``fc``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import linen as L
from attention_jax._types import Dtype, PrecisionLike
from attention_jax._validation import check_choice, check_nhwc, check_positive_int, fail
from attention_jax.functional.pooling import global_avg_pool
from attention_jax.registry import create_attention

__all__ = [
    "LAYOUTS",
    "ResNetBlock",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet_tiny",
]

LAYOUTS: dict[str, dict[str, Any]] = {
    "resnet18": {"block": "basic", "layers": (2, 2, 2, 2)},
    "resnet34": {"block": "basic", "layers": (3, 4, 6, 3)},
    "resnet50": {"block": "bottleneck", "layers": (3, 4, 6, 3)},
    "resnet101": {"block": "bottleneck", "layers": (3, 4, 23, 3)},
    # For CPU training on small images (digits): three 1-block stages, 16-32-64 wide.
    "resnet_tiny": {"block": "basic", "layers": (1, 1, 1), "widths": (16, 32, 64),
                    "stem_width": 16, "small_stem": True},
}
"""The named layouts: keyword arguments for ``ResNet`` (both APIs)."""

_BLOCKS = ("basic", "bottleneck")
_SPATIAL = ("conv", "sk", "splat")
# PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here), so converted weights behave;
# the two-pass variance (as PyTorch) stays accurate when the batch statistics are near-constant.
_BN = {"momentum": 0.9, "epsilon": 1e-5, "use_fast_variance": False}


@dataclass(frozen=True)
class _BlockPlan:
    """Widths of one residual block, shared by the linen and nnx builders."""

    in_channels: int
    width: int  # the 3x3 conv's width (bottleneck: planes * base_width / 64 * groups)
    out_channels: int
    stride: int
    bottleneck: bool
    downsample: bool


def _block_plan(fn: str, in_channels: int, planes: int, stride: int, block: str, groups: int,
                base_width: int) -> _BlockPlan:
    check_choice(fn, "block", block, _BLOCKS)
    check_positive_int(fn, "in_channels", in_channels)
    check_positive_int(fn, "planes", planes)
    check_positive_int(fn, "stride", stride)
    check_positive_int(fn, "groups", groups)
    check_positive_int(fn, "base_width", base_width)
    bottleneck = block == "bottleneck"
    if bottleneck:
        width, out = int(planes * (base_width / 64.0)) * groups, planes * 4
    else:
        if groups != 1 or base_width != 64:
            raise fail(fn, "groups/base_width", "1/64 for the basic block (as torchvision)",
                       f"{groups}/{base_width}")
        width, out = planes, planes
    return _BlockPlan(in_channels, width, out, stride, bottleneck,
                      stride != 1 or in_channels != out)


def _spatial_options(fn: str, spatial_conv: str, spatial_kwargs: Mapping[str, Any] | None,
                     groups: int) -> dict[str, Any]:
    """Options of the SK / split-attention conv replacing the block's 3x3 conv."""
    check_choice(fn, "spatial_conv", spatial_conv, _SPATIAL)
    opts = dict(spatial_kwargs or {})
    if spatial_conv == "conv":
        if opts:
            raise fail(fn, "spatial_kwargs", "empty when spatial_conv='conv'", repr(opts))
        return opts
    opts.setdefault("groups", groups)
    if spatial_conv == "splat":
        # ResNeSt's own widths: d = max(C * radix / 4, 32) (its reduction_factor 4).
        opts.setdefault("rd_ratio", 0.25)
    return opts


def _attention_options(attention_kwargs: Mapping[str, Any] | None, dtype, param_dtype,
                       precision) -> dict[str, Any]:
    opts = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision}
    opts.update(attention_kwargs or {})
    return opts


def _stage_plans(fn: str, *, block: str, layers: Sequence[int], widths: Sequence[int],
                 stem_width: int, groups: int, base_width: int) -> list[list[_BlockPlan]]:
    if len(layers) != len(widths) or not layers:
        raise fail(fn, "layers", f"one block count per stage width (len(widths)={len(widths)})",
                   repr(tuple(layers)))
    for n in layers:
        check_positive_int(fn, "layers", n)
    check_positive_int(fn, "stem_width", stem_width)
    plans, in_ch = [], stem_width
    for s, (n, planes) in enumerate(zip(layers, widths, strict=True)):
        stage = []
        for b in range(n):
            p = _block_plan(fn, in_ch, planes, 2 if (s > 0 and b == 0) else 1, block, groups,
                            base_width)
            stage.append(p)
            in_ch = p.out_channels
        plans.append(stage)
    return plans


class ResNetBlock(nn.Module):
    """A residual block (basic or bottleneck) with optional attention, linen.

    Input (N, H, W, in_channels) -> output (N, H / stride, W / stride, out) with out = planes
    (basic) or 4 * planes (bottleneck). Parameters: ``conv1``/``bn1``, ``conv2``/``bn2``
    (``conv3``/``bn3`` for bottleneck), ``attn`` (after the last BN, before the add) and
    ``downsample_conv``/``downsample_bn`` when the shape changes. With ``spatial_conv="sk"`` or
    ``"splat"`` the 3x3 conv carrying the stride (basic: ``conv1``; bottleneck: ``conv2``) is a
    ``SelectiveKernel`` / ``SplitAttention`` (which hold their own BN and ReLU).
    """

    in_channels: int
    planes: int
    stride: int = 1
    block: str = "basic"
    groups: int = 1
    base_width: int = 64
    spatial_conv: str = "conv"
    spatial_kwargs: Mapping[str, Any] | None = None
    attention: str | None = None
    attention_kwargs: Mapping[str, Any] | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        fn = "ResNetBlock"
        p = _block_plan(fn, self.in_channels, self.planes, self.stride, self.block, self.groups,
                        self.base_width)
        sk = _spatial_options(fn, self.spatial_conv, self.spatial_kwargs, self.groups)
        common = {"dtype": self.dtype, "param_dtype": self.param_dtype,
                  "precision": self.precision}
        conv = partial(nn.Conv, use_bias=False, **common)
        bn = partial(nn.BatchNorm, dtype=self.dtype, param_dtype=self.param_dtype, **_BN)
        pad1 = ((1, 1), (1, 1))

        def spatial(cin, cout):
            if self.spatial_conv == "sk":
                return L.SelectiveKernel(cin, out_channels=cout, stride=p.stride, **sk, **common)
            if self.spatial_conv == "splat":
                return L.SplitAttention(cin, out_channels=cout, stride=p.stride, **sk, **common)
            return conv(cout, (3, 3), strides=p.stride, padding=pad1,
                        feature_group_count=self.groups)

        if p.bottleneck:
            self.conv1, self.bn1 = conv(p.width, (1, 1)), bn()
            self.conv2 = spatial(p.width, p.width)
            if self.spatial_conv == "conv":
                self.bn2 = bn()
            self.conv3, self.bn3 = conv(p.out_channels, (1, 1)), bn()
        else:
            self.conv1 = spatial(p.in_channels, p.width)
            if self.spatial_conv == "conv":
                self.bn1 = bn()
            self.conv2, self.bn2 = conv(p.out_channels, (3, 3), padding=pad1), bn()
        if self.attention is not None:
            self.attn = create_attention(
                self.attention, p.out_channels,
                **_attention_options(self.attention_kwargs, self.dtype, self.param_dtype,
                                     self.precision))
        if p.downsample:
            self.downsample_conv = conv(p.out_channels, (1, 1), strides=p.stride)
            self.downsample_bn = bn()
        self.plan = p

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, in_channels); train: BatchNorm mode. Returns (N, H', W', out)."""
        check_nhwc("ResNetBlock", "x", x, self.in_channels)
        ura = not train
        p = self.plan

        def spatial(h, conv_name, bn_name):
            if self.spatial_conv == "conv":
                h = getattr(self, bn_name)(getattr(self, conv_name)(h), use_running_average=ura)
                return nn.relu(h)
            return getattr(self, conv_name)(h, train=train)

        if p.bottleneck:
            h = nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
            h = spatial(h, "conv2", "bn2")
            h = self.bn3(self.conv3(h), use_running_average=ura)
        else:
            h = spatial(x, "conv1", "bn1")
            h = self.bn2(self.conv2(h), use_running_average=ura)
        if self.attention is not None:
            h = self.attn(h, train=train)
        shortcut = x
        if p.downsample:
            shortcut = self.downsample_bn(self.downsample_conv(x), use_running_average=ura)
        return nn.relu(h + shortcut.astype(h.dtype))


class ResNet(nn.Module):
    """ResNet (He et al., CVPR 2016) with pluggable attention, linen.

    Input (N, H, W, in_channels) -> logits (N, num_classes), or pooled features
    (N, out_channels) with ``num_classes=None``. Stem: 7x7/2 conv + BN + ReLU + 3x3/2 max
    pool, or with ``small_stem`` (CIFAR/digit-sized images) a 3x3/1 conv and no pool. Stage s
    (``layer{s}_{b}``) has ``layers[s]`` blocks of width ``widths[s]``, stride 2 from the second
    stage on. ``attention``: a registry name (``"se"``, ``"eca"``, ...) or None (plain ResNet);
    ``spatial_conv``: ``"conv"``, ``"sk"`` (SK-ResNet; with ``groups=32, base_width=4`` on the
    bottleneck: SKNet-50) or ``"splat"`` (ResNeSt blocks, radix 2; no deep stem or avg-down).
    """

    layers: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    widths: Sequence[int] = (64, 128, 256, 512)
    num_classes: int | None = 1000
    in_channels: int = 3
    stem_width: int = 64
    small_stem: bool = False
    groups: int = 1
    base_width: int = 64
    spatial_conv: str = "conv"
    spatial_kwargs: Mapping[str, Any] | None = None
    attention: str | None = None
    attention_kwargs: Mapping[str, Any] | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        fn = "ResNet"
        check_positive_int(fn, "in_channels", self.in_channels)
        if self.num_classes is not None:
            check_positive_int(fn, "num_classes", self.num_classes)
        plans = _stage_plans(fn, block=self.block, layers=self.layers, widths=self.widths,
                             stem_width=self.stem_width, groups=self.groups,
                             base_width=self.base_width)
        common = {"dtype": self.dtype, "param_dtype": self.param_dtype,
                  "precision": self.precision}
        k, s = (3, 1) if self.small_stem else (7, 2)
        self.conv1 = nn.Conv(self.stem_width, (k, k), strides=s,
                             padding=((k // 2, k // 2),) * 2, use_bias=False, **common)
        self.bn1 = nn.BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, **_BN)
        names = []
        for si, stage in enumerate(plans, start=1):
            for bi, p in enumerate(stage):
                name = f"layer{si}_{bi}"
                setattr(self, name, ResNetBlock(
                    p.in_channels, self.widths[si - 1], stride=p.stride, block=self.block,
                    groups=self.groups, base_width=self.base_width,
                    spatial_conv=self.spatial_conv, spatial_kwargs=self.spatial_kwargs,
                    attention=self.attention, attention_kwargs=self.attention_kwargs, **common))
                names.append(name)
        self.block_names = tuple(names)
        if self.num_classes is not None:
            self.fc = nn.Dense(self.num_classes, **common)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, in_channels); train: BatchNorm mode. Returns (N, num_classes)."""
        check_nhwc("ResNet", "x", x, self.in_channels)
        h = nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        if not self.small_stem:
            h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for name in self.block_names:
            h = getattr(self, name)(h, train=train)
        h = global_avg_pool(h)
        return h if self.num_classes is None else self.fc(h)


def _named(layout: str):
    def build(**kwargs: Any) -> ResNet:
        return ResNet(**{**LAYOUTS[layout], **kwargs})

    build.__name__ = layout
    build.__doc__ = (f"The {layout} layout as a linen ``ResNet`` (N, H, W, 3) -> (N, num_classes)."
                     f"\n\n    Args:\n      **kwargs: ``ResNet`` fields overriding the layout "
                     f"({LAYOUTS[layout]}).\n\n    Returns:\n      The (unbound) ``ResNet``.")
    return build


resnet18 = _named("resnet18")
resnet34 = _named("resnet34")
resnet50 = _named("resnet50")
resnet101 = _named("resnet101")
resnet_tiny = _named("resnet_tiny")
