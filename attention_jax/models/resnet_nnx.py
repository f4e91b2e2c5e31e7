"""ResNet backbones with pluggable attention (Flax nnx); same parameter tree as ``resnet``.

See ``attention_jax.models.resnet`` for the design; this file only builds the same layers as
nnx modules (``conv1``, ``bn1``, ``layer{s}_{b}``, ``fc``). BatchNorm mode via
``model.train()`` / ``model.eval()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import nnx as N
from attention_jax._types import Dtype, PrecisionLike
from attention_jax._validation import check_nhwc, check_positive_int
from attention_jax.functional.pooling import global_avg_pool
from attention_jax.models.resnet import (
    _BN,
    LAYOUTS,
    _attention_options,
    _block_plan,
    _spatial_options,
    _stage_plans,
)
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


class ResNetBlock(nnx.Module):
    """A residual block (basic or bottleneck) with optional attention, nnx.

    Input (N, H, W, in_channels) -> output (N, H / stride, W / stride, out); same fields and
    parameters as the linen ``ResNetBlock``.
    """

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        stride: int = 1,
        block: str = "basic",
        groups: int = 1,
        base_width: int = 64,
        spatial_conv: str = "conv",
        spatial_kwargs: Mapping[str, Any] | None = None,
        attention: str | None = None,
        attention_kwargs: Mapping[str, Any] | None = None,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        fn = "ResNetBlock"
        p = _block_plan(fn, in_channels, planes, stride, block, groups, base_width)
        sk = _spatial_options(fn, spatial_conv, spatial_kwargs, groups)
        common = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision}
        conv = partial(nnx.Conv, use_bias=False, rngs=rngs, **common)
        bn = partial(nnx.BatchNorm, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **_BN)
        pad1 = ((1, 1), (1, 1))

        def spatial(cin, cout):
            if spatial_conv == "sk":
                return N.SelectiveKernel(cin, out_channels=cout, stride=p.stride, rngs=rngs,
                                         **sk, **common)
            if spatial_conv == "splat":
                return N.SplitAttention(cin, out_channels=cout, stride=p.stride, rngs=rngs,
                                        **sk, **common)
            return conv(cin, cout, (3, 3), strides=p.stride, padding=pad1,
                        feature_group_count=groups)

        self.in_channels, self.spatial_conv, self.attention = in_channels, spatial_conv, attention
        self.bottleneck, self.downsample = p.bottleneck, p.downsample
        if p.bottleneck:
            self.conv1, self.bn1 = conv(in_channels, p.width, (1, 1)), bn(p.width)
            self.conv2 = spatial(p.width, p.width)
            if spatial_conv == "conv":
                self.bn2 = bn(p.width)
            self.conv3, self.bn3 = conv(p.width, p.out_channels, (1, 1)), bn(p.out_channels)
        else:
            self.conv1 = spatial(in_channels, p.width)
            if spatial_conv == "conv":
                self.bn1 = bn(p.width)
            self.conv2 = conv(p.width, p.out_channels, (3, 3), padding=pad1)
            self.bn2 = bn(p.out_channels)
        if attention is not None:
            self.attn = create_attention(
                attention, p.out_channels, api="nnx", rngs=rngs,
                **_attention_options(attention_kwargs, dtype, param_dtype, precision))
        if p.downsample:
            self.downsample_conv = conv(in_channels, p.out_channels, (1, 1), strides=p.stride)
            self.downsample_bn = bn(p.out_channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, in_channels). Returns (N, H', W', out)."""
        check_nhwc("ResNetBlock", "x", x, self.in_channels)

        def spatial(h, conv_name, bn_name):
            h = getattr(self, conv_name)(h)
            if self.spatial_conv == "conv":
                h = jax.nn.relu(getattr(self, bn_name)(h))
            return h

        if self.bottleneck:
            h = jax.nn.relu(self.bn1(self.conv1(x)))
            h = spatial(h, "conv2", "bn2")
            h = self.bn3(self.conv3(h))
        else:
            h = spatial(x, "conv1", "bn1")
            h = self.bn2(self.conv2(h))
        if self.attention is not None:
            h = self.attn(h)
        shortcut = self.downsample_bn(self.downsample_conv(x)) if self.downsample else x
        return jax.nn.relu(h + shortcut.astype(h.dtype))


class ResNet(nnx.Module):
    """ResNet (He et al., CVPR 2016) with pluggable attention, nnx.

    Input (N, H, W, in_channels) -> logits (N, num_classes), or pooled features
    (N, out_channels) with ``num_classes=None``. Same fields and parameter tree as the linen
    ``ResNet`` (see its docstring).
    """

    def __init__(
        self,
        *,
        layers: Sequence[int] = (2, 2, 2, 2),
        block: str = "basic",
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int | None = 1000,
        in_channels: int = 3,
        stem_width: int = 64,
        small_stem: bool = False,
        groups: int = 1,
        base_width: int = 64,
        spatial_conv: str = "conv",
        spatial_kwargs: Mapping[str, Any] | None = None,
        attention: str | None = None,
        attention_kwargs: Mapping[str, Any] | None = None,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        fn = "ResNet"
        check_positive_int(fn, "in_channels", in_channels)
        if num_classes is not None:
            check_positive_int(fn, "num_classes", num_classes)
        plans = _stage_plans(fn, block=block, layers=layers, widths=widths,
                             stem_width=stem_width, groups=groups, base_width=base_width)
        common = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision}
        k, s = (3, 1) if small_stem else (7, 2)
        self.in_channels, self.small_stem, self.num_classes = in_channels, small_stem, num_classes
        self.conv1 = nnx.Conv(in_channels, stem_width, (k, k), strides=s,
                              padding=((k // 2, k // 2),) * 2, use_bias=False, rngs=rngs,
                              **common)
        self.bn1 = nnx.BatchNorm(stem_width, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                 **_BN)
        names = []
        for si, stage in enumerate(plans, start=1):
            for bi, p in enumerate(stage):
                name = f"layer{si}_{bi}"
                setattr(self, name, ResNetBlock(
                    p.in_channels, widths[si - 1], stride=p.stride, block=block, groups=groups,
                    base_width=base_width, spatial_conv=spatial_conv,
                    spatial_kwargs=spatial_kwargs, attention=attention,
                    attention_kwargs=attention_kwargs, rngs=rngs, **common))
                names.append(name)
        self.block_names = tuple(names)
        if num_classes is not None:
            self.fc = nnx.Linear(plans[-1][-1].out_channels, num_classes, rngs=rngs, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, in_channels). Returns (N, num_classes) (or (N, C) features)."""
        check_nhwc("ResNet", "x", x, self.in_channels)
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        if not self.small_stem:
            h = nnx.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for name in self.block_names:
            h = getattr(self, name)(h)
        h = global_avg_pool(h)
        return h if self.num_classes is None else self.fc(h)


def _named(layout: str):
    def build(**kwargs: Any) -> ResNet:
        return ResNet(**{**LAYOUTS[layout], **kwargs})

    build.__name__ = layout
    build.__doc__ = (f"The {layout} layout as an nnx ``ResNet`` (N, H, W, 3) -> (N, num_classes)."
                     f"\n\n    Args:\n      **kwargs: ``ResNet`` fields (``rngs`` required) "
                     f"overriding the layout ({LAYOUTS[layout]}).\n\n    Returns:\n      The "
                     f"``ResNet``.")
    return build


resnet18 = _named("resnet18")
resnet34 = _named("resnet34")
resnet50 = _named("resnet50")
resnet101 = _named("resnet101")
resnet_tiny = _named("resnet_tiny")
