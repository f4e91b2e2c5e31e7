"""ResNet backbones with pluggable attention (Flax nnx); same parameter tree as ``resnet``.

``attention_jax.models.resnet_core`` plans the layers and holds the forwards; this file only
declares the planned layers as nnx modules (``[stem_conv{i}, stem_bn{i},] conv1, bn1,
layer{s}_{b}, fc``). BatchNorm mode via ``model.train()`` / ``model.eval()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import nnx as N
from attention_jax._types import Dtype, PrecisionLike
from attention_jax.models import resnet_core as core
from attention_jax.nnx.layers import batch_norm
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


def _declare(spec: core.LayerSpec, common: dict[str, Any], rngs: nnx.Rngs) -> nnx.Module:
    """The nnx layer a ``resnet_core`` declaration names."""
    if isinstance(spec, core.Conv):
        p = spec.padding
        return nnx.Conv(spec.in_channels, spec.out_channels, (spec.kernel, spec.kernel),
                        strides=spec.stride, padding=((p, p), (p, p)),
                        feature_group_count=spec.groups, use_bias=False, rngs=rngs,
                        conv_general_dilated=spec.conv_general_dilated, **common)
    if isinstance(spec, core.Norm):
        return batch_norm(spec.channels, dtype=common["dtype"], param_dtype=common["param_dtype"],
                          rngs=rngs)
    if isinstance(spec, core.Spatial):
        cls = N.SelectiveKernel if spec.kind == "sk" else N.SplitAttention
        return cls(spec.in_channels, out_channels=spec.out_channels, stride=spec.stride,
                   rngs=rngs, **spec.options, **common)
    if isinstance(spec, core.Attention):
        return create_attention(spec.name, spec.channels, api="nnx", rngs=rngs,
                                **{**common, **spec.options})
    return nnx.Linear(spec.in_features, spec.out_features, rngs=rngs, **common)


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
        attention_position: str = "last",
        avg_down: bool = False,
        avd: bool = False,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        self.plan = nnx.static(core.block_plan(
            "ResNetBlock", in_channels=in_channels, planes=planes, stride=stride, block=block,
            groups=groups, base_width=base_width, spatial_conv=spatial_conv,
            spatial_kwargs=spatial_kwargs, attention=attention,
            attention_kwargs=attention_kwargs, attention_position=attention_position,
            avg_down=avg_down, avd=avd))
        common = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision}
        for name, spec in self.plan.layers:
            setattr(self, name, _declare(spec, common, rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, in_channels). Returns (N, H', W', out)."""
        layers = {n: getattr(self, n) for n, _ in self.plan.layers}
        return core.residual_block(x, self.plan, layers)


class ResNet(nnx.Module):
    """ResNet (He et al., CVPR 2016) with pluggable attention and timm's options, nnx.

    Input (N, H, W, in_channels) -> logits (N, num_classes), or pooled features
    (N, num_features) with ``num_classes=None``. Same fields and parameter tree as the linen
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
        stem_type: str = "plain",
        stem_pool: bool = True,
        small_stem: bool = False,
        groups: int = 1,
        base_width: int = 64,
        spatial_conv: str = "conv",
        spatial_kwargs: Mapping[str, Any] | None = None,
        attention: str | None = None,
        attention_kwargs: Mapping[str, Any] | None = None,
        attention_position: str = "last",
        avg_down: bool = False,
        avd: bool = False,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        self.plan = nnx.static(core.resnet_plan(
            "ResNet", layers=layers, block=block, widths=widths, num_classes=num_classes,
            in_channels=in_channels, stem_width=stem_width, stem_type=stem_type,
            stem_pool=stem_pool, small_stem=small_stem, groups=groups, base_width=base_width,
            spatial_conv=spatial_conv, spatial_kwargs=spatial_kwargs, attention=attention,
            attention_kwargs=attention_kwargs, attention_position=attention_position,
            avg_down=avg_down, avd=avd))
        common = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision}
        for name, spec in (*self.plan.stem_layers, *self.plan.head_layers):
            setattr(self, name, _declare(spec, common, rngs))
        for name, p in self.plan.blocks:
            setattr(self, name, ResNetBlock(p.in_channels, p.planes, stride=p.stride,
                                            **self.plan.block_options, rngs=rngs, **common))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, in_channels). Returns (N, num_classes) (or (N, C) features)."""
        specs = (*self.plan.stem_layers, *self.plan.head_layers)
        layers = {n: getattr(self, n) for n, _ in specs}
        h = core.stem(x, self.plan, layers)
        for name, _ in self.plan.blocks:
            h = getattr(self, name)(h)
        return core.head(h, self.plan, layers)


resnet18 = core.layout_builder(ResNet, "resnet18")
resnet34 = core.layout_builder(ResNet, "resnet34")
resnet50 = core.layout_builder(ResNet, "resnet50")
resnet101 = core.layout_builder(ResNet, "resnet101")
resnet_tiny = core.layout_builder(ResNet, "resnet_tiny")
