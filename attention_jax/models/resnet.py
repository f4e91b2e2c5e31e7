"""ResNet backbones with pluggable attention (Flax linen); ``resnet_nnx`` is the nnx twin.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (torchvision layout:
stride on the 3x3 conv of the bottleneck, 1x1 conv + BN shortcut when the shape changes), with
the options of timm's ResNet family (deep/tiered stems, avg-down shortcut, ResNeSt's avd, SK /
split-attention 3x3 convs, attention after the last BN or after the 3x3 conv): see
``attention_jax.models.resnet_core``, which plans the layers and holds the forwards. This file
only declares the planned layers as linen modules. The linen and nnx models have one parameter
tree (``[stem_conv{i}, stem_bn{i},] conv1, bn1, layer{s}_{b}, fc``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import linen as L
from attention_jax._types import Dtype, PrecisionLike
from attention_jax.linen.layers import batch_norm
from attention_jax.models import resnet_core as core
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

LAYOUTS = core.LAYOUTS


class _Declare:
    """Builds the linen layer a ``resnet_core`` declaration names; binds the train flag."""

    def __init__(self, dtype: Dtype | None, param_dtype: Dtype, precision: PrecisionLike):
        self.common = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision}

    def __call__(self, spec: core.LayerSpec) -> nn.Module:
        c = self.common
        if isinstance(spec, core.Conv):
            p = spec.padding
            return nn.Conv(spec.out_channels, (spec.kernel, spec.kernel), strides=spec.stride,
                           padding=((p, p), (p, p)), feature_group_count=spec.groups,
                           use_bias=False, conv_general_dilated=spec.conv_general_dilated, **c)
        if isinstance(spec, core.Norm):
            return batch_norm(dtype=c["dtype"], param_dtype=c["param_dtype"])
        if isinstance(spec, core.Spatial):
            cls = L.SelectiveKernel if spec.kind == "sk" else L.SplitAttention
            return cls(spec.in_channels, out_channels=spec.out_channels, stride=spec.stride,
                       **spec.options, **c)
        if isinstance(spec, core.Attention):
            return create_attention(spec.name, spec.channels, **{**c, **spec.options})
        return nn.Dense(spec.out_features, **c)

    @staticmethod
    def bind(layer: nn.Module, spec: core.LayerSpec, train: bool):
        if isinstance(spec, core.Norm):
            return partial(layer, use_running_average=not train)
        if isinstance(spec, core.Spatial | core.Attention):
            return partial(layer, train=train)
        return layer


class ResNetBlock(nn.Module):
    """A residual block (basic or bottleneck) with optional attention, linen.

    Input (N, H, W, in_channels) -> output (N, H / stride, W / stride, out) with out = planes
    (basic) or 4 * planes (bottleneck). Parameters: ``conv1``/``bn1``, ``conv2``/``bn2``
    (``conv3``/``bn3`` for bottleneck), ``attn`` and ``downsample_conv``/``downsample_bn`` when
    the shape changes. With ``spatial_conv="sk"`` or ``"splat"`` the 3x3 conv (basic:
    ``conv1``; bottleneck: ``conv2``) is a ``SelectiveKernel`` / ``SplitAttention`` holding its
    own BN and ReLU. ``attention_position``, ``avg_down``, ``avd``: see ``resnet_core``.
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
    attention_position: str = "last"
    avg_down: bool = False
    avd: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        self.plan = core.block_plan(
            "ResNetBlock", in_channels=self.in_channels, planes=self.planes, stride=self.stride,
            block=self.block, groups=self.groups, base_width=self.base_width,
            spatial_conv=self.spatial_conv, spatial_kwargs=self.spatial_kwargs,
            attention=self.attention, attention_kwargs=self.attention_kwargs,
            attention_position=self.attention_position, avg_down=self.avg_down, avd=self.avd)
        declare = _Declare(self.dtype, self.param_dtype, self.precision)
        for name, spec in self.plan.layers:
            setattr(self, name, declare(spec))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, in_channels); train: BatchNorm mode. Returns (N, H', W', out)."""
        layers = {n: _Declare.bind(getattr(self, n), s, train) for n, s in self.plan.layers}
        return core.residual_block(x, self.plan, layers)


class ResNet(nn.Module):
    """ResNet (He et al., CVPR 2016) with pluggable attention and timm's options, linen.

    Input (N, H, W, in_channels) -> logits (N, num_classes), or pooled features
    (N, num_features) with ``num_classes=None``. Stage s (``layer{s}_{b}``) has ``layers[s]``
    blocks of width ``widths[s]``, stride 2 from the second stage on. ``attention``: a
    registry name (``"se"``, ``"eca"``, ...) or None; ``spatial_conv``: ``"conv"``, ``"sk"``
    (SK-ResNet; with ``groups=32, base_width=4`` on the bottleneck: SKNet-50) or ``"splat"``
    (ResNeSt). Stems (``stem_type``, ``stem_width``, ``stem_pool``, ``small_stem``), shortcut
    (``avg_down``), ``avd`` and ``attention_position``: see ``attention_jax.models.resnet_core``.
    ``attention_jax.models.create_model`` builds timm's named variants.
    """

    layers: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    widths: Sequence[int] = (64, 128, 256, 512)
    num_classes: int | None = 1000
    in_channels: int = 3
    stem_width: int = 64
    stem_type: str = "plain"
    stem_pool: bool = True
    small_stem: bool = False
    groups: int = 1
    base_width: int = 64
    spatial_conv: str = "conv"
    spatial_kwargs: Mapping[str, Any] | None = None
    attention: str | None = None
    attention_kwargs: Mapping[str, Any] | None = None
    attention_position: str = "last"
    avg_down: bool = False
    avd: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        self.plan = core.resnet_plan(
            "ResNet", layers=self.layers, block=self.block, widths=self.widths,
            num_classes=self.num_classes, in_channels=self.in_channels,
            stem_width=self.stem_width, stem_type=self.stem_type, stem_pool=self.stem_pool,
            small_stem=self.small_stem, groups=self.groups, base_width=self.base_width,
            spatial_conv=self.spatial_conv, spatial_kwargs=self.spatial_kwargs,
            attention=self.attention, attention_kwargs=self.attention_kwargs,
            attention_position=self.attention_position, avg_down=self.avg_down, avd=self.avd)
        common = {"dtype": self.dtype, "param_dtype": self.param_dtype,
                  "precision": self.precision}
        declare = _Declare(**common)
        for name, spec in (*self.plan.stem_layers, *self.plan.head_layers):
            setattr(self, name, declare(spec))
        for name, p in self.plan.blocks:
            setattr(self, name, ResNetBlock(p.in_channels, p.planes, stride=p.stride,
                                            **self.plan.block_options, **common))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, in_channels); train: BatchNorm mode. Returns (N, num_classes)."""
        specs = (*self.plan.stem_layers, *self.plan.head_layers)
        layers = {n: _Declare.bind(getattr(self, n), s, train) for n, s in specs}
        h = core.stem(x, self.plan, layers)
        for name, _ in self.plan.blocks:
            h = getattr(self, name)(h, train=train)
        return core.head(h, self.plan, layers)


resnet18 = core.layout_builder(ResNet, "resnet18")
resnet34 = core.layout_builder(ResNet, "resnet34")
resnet50 = core.layout_builder(ResNet, "resnet50")
resnet101 = core.layout_builder(ResNet, "resnet101")
resnet_tiny = core.layout_builder(ResNet, "resnet_tiny")
