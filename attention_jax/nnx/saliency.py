"""PFANet (Zhao and Wu, CVPR 2019) as Flax nnx modules (thin wrappers over functional)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_feature_map
from attention_jax.functional._batch import keep_leading
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.nnx._maps import call_and_sow, sow_maps, wants_maps
from attention_jax.nnx.layers import batch_norm, conv
from attention_jax.plans import (
    ContextAwarePyramidPlan,
    PyramidFeatureAttentionPlan,
    PyramidSpatialAttentionPlan,
)

__all__ = ["ContextAwarePyramid", "PyramidSpatialAttention", "PyramidFeatureAttention"]


class ContextAwarePyramid(nnx.Module):
    """PFANet's context-aware pyramid (CPFE) plus its channel-wise attention (CA), nnx.

    Input (..., H, W, C) -> output (..., H, W, out_channels) (= C by default: the registry name
    ``pfa``). Same fields and parameters as the linen module: ``conv0`` (1x1), ``conv{i}``
    (3x3, dilation ``dilations[i-1]``), ``bn``, and with ``channel_attention`` ``ca_fc1``,
    ``ca_fc2``. BatchNorm mode via ``module.train()`` / ``module.eval()``.

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): with
    ``channel_attention`` (the default), ``channel_weights`` (N, 1, 1, out_channels), CA's gate
    on the concatenated pyramid; none without it.

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics). A new module
    is in training mode (batch statistics, running ones updated in place); ``module.eval()``
    switches to the running statistics, ``module.train()`` back.
    """

    def __init__(
        self,
        channels: int,
        *,
        out_channels: int | None = None,
        dilations: Sequence[int] = (3, 5, 7),
        channel_attention: bool = True,
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
        p = self.plan = ContextAwarePyramidPlan.create(
            channels, out_channels=out_channels, dilations=dilations,
            channel_attention=channel_attention, rd_ratio=rd_ratio, rd_channels=rd_channels,
            rd_divisor=rd_divisor, act=act, gate=gate)
        c, branch, out = p.channels, p.branch_channels, p.out_channels
        conv_ = partial(conv, dtype=dtype, param_dtype=param_dtype, precision=precision,
                        rngs=rngs)
        self.conv0 = conv_(c, branch, 1, use_bias=False,
                            # XLA's convolution, not the CPU's matmul form: in this module
                            # (1x1 -> BatchNorm -> concatenated with the dilated branches) the
                            # matmul made forward+backward 1.2-1.3x slower (batch 32, 28x28x64,
                            # Intel Xeon, 2026-12-02), though alone it is 2.7x faster.
                            conv_general_dilated=jax.lax.conv_general_dilated)
        for i, d in enumerate(p.dilations, start=1):
            setattr(self, f"conv{i}", conv_(c, branch, 3, padding=d, kernel_dilation=d,
                                            use_bias=False,
                                            conv_general_dilated=conv_general_dilated))
        self.bn = batch_norm(out, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if p.channel_attention:
            self.ca_fc1 = conv_(out, p.rd_channels, 1)
            self.ca_fc2 = conv_(p.rd_channels, out, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C')."""
        p = self.plan
        check_feature_map("ContextAwarePyramid", "x", x, p.channels)
        ca = p.channel_attention
        return call_and_sow(
            self, F.context_aware_pyramid, x,
            convs=[getattr(self, f"conv{i}") for i in range(len(p.dilations) + 1)], norm=self.bn,
            act=p.act, reduce=self.ca_fc1 if ca else None, expand=self.ca_fc2 if ca else None,
            gate=p.gate,
        )


class PyramidSpatialAttention(nnx.Module):
    """PFANet's spatial attention: (1xk, kx1) and (kx1, 1xk) conv branches -> sigmoid, nnx.

    Input (..., H, W, C) -> output (..., H, W, C): ``x * map(guide)`` with the (N, H, W, 1) map
    computed from ``guide`` (default ``x``). Same fields and parameters as the linen module
    (``b1_conv1``, ``b1_bn1``, ``b1_conv2``, ``b1_bn2``, ``b2_*``).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``spatial_map``
    (N, H, W, 1), the gate computed from ``guide`` that multiplies ``x``.

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics). A new module
    is in training mode (batch statistics, running ones updated in place); ``module.eval()``
    switches to the running statistics, ``module.train()`` back.
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 9,
        mid_channels: int | None = None,
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        p = self.plan = PyramidSpatialAttentionPlan.create(
            channels, kernel_size=kernel_size, mid_channels=mid_channels, act=act, gate=gate)
        c, mid = p.channels, p.mid_channels
        conv_ = partial(conv, dtype=dtype, param_dtype=param_dtype, precision=precision,
                        rngs=rngs)
        bn = partial(batch_norm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        row, col = (p.row_kernel, p.row_padding), (p.col_kernel, p.col_padding)
        self.b1_conv1, self.b1_bn1 = conv_(c, mid, row[0], padding=row[1]), bn(mid)
        self.b1_conv2, self.b1_bn2 = conv_(mid, 1, col[0], padding=col[1]), bn(1)
        self.b2_conv1, self.b2_bn1 = conv_(c, mid, col[0], padding=col[1]), bn(mid)
        self.b2_conv2, self.b2_bn2 = conv_(mid, 1, row[0], padding=row[1]), bn(1)

    def attention_map(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns the (..., H, W, 1) map."""
        p = self.plan
        check_feature_map("PyramidSpatialAttention", "x", x, p.channels)
        branches = [[(self.b1_conv1, self.b1_bn1), (self.b1_conv2, self.b1_bn2)],
                    [(self.b2_conv1, self.b2_bn1), (self.b2_conv2, self.b2_bn2)]]
        m = F.pyramid_spatial_map(x, branches=branches, act=p.act, gate=p.gate)
        if wants_maps(self):
            sow_maps(self, {"spatial_map": m})
        return m

    def __call__(self, x: jax.Array, *, guide: jax.Array | None = None) -> jax.Array:
        """Args: x (..., H, W, Cx); guide (..., H, W, C) or None (x). Returns (..., H, W, Cx)."""
        check_feature_map("PyramidSpatialAttention", "x", x)  # the map checks its input
        return F.rescale(x, self.attention_map(x if guide is None else guide))


class PyramidFeatureAttention(nnx.Module):
    """PFANet saliency head: (low, high)-level features -> one-channel saliency map, nnx.

    Inputs low (N, H, W, Cl) and high (N, h, w, Ch) -> output (..., H, W, 1). Same fields and
    parameters as the linen module (``cpfe``, ``high_conv``, ``high_bn``, ``low_conv``,
    ``low_bn``, ``sa``, ``head_conv``).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): none of its own; its
    parts sow under their names: ``cpfe`` ``channel_weights`` (N, 1, 1, (1 + len(dilations)) *
    features) and ``sa`` ``spatial_map`` (N, H, W, 1).

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics). A new module
    is in training mode (batch statistics, running ones updated in place); ``module.eval()``
    switches to the running statistics, ``module.train()`` back.
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        *,
        features: int = 32,
        mid_channels: int = 64,
        dilations: Sequence[int] = (3, 5, 7),
        kernel_size: int = 9,
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
        p = self.plan = PyramidFeatureAttentionPlan.create(
            low_channels, high_channels, features=features, mid_channels=mid_channels,
            dilations=dilations, kernel_size=kernel_size, rd_ratio=rd_ratio,
            rd_channels=rd_channels, rd_divisor=rd_divisor, act=act, gate=gate)
        mid = p.mid_channels
        common = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision}
        conv_ = partial(conv, rngs=rngs, **common)
        bn = partial(batch_norm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.cpfe = ContextAwarePyramid(
            p.high_channels, out_channels=p.pyramid_channels, dilations=dilations,
            rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor, act=act,
            rngs=rngs, **common)
        self.high_conv, self.high_bn = conv_(p.pyramid_channels, mid, 1), bn(mid)
        self.low_conv, self.low_bn = conv_(p.low_channels, mid, 3, padding=1), bn(mid)
        self.sa = PyramidSpatialAttention(mid, kernel_size=kernel_size, act=act, rngs=rngs,
                                          **common)
        self.head_conv = conv_(2 * mid, 1, 3, padding=1)

    def __call__(self, low: jax.Array, high: jax.Array) -> jax.Array:
        """Args: low (..., H, W, Cl); high (..., h, w, Ch). Returns (..., H, W, 1)."""
        p, fn = self.plan, "PyramidFeatureAttention"
        check_feature_map(fn, "low", low, p.low_channels)
        check_feature_map(fn, "high", high, p.high_channels)
        cna = partial(F.conv_norm_act, act=p.act)
        lead = low.shape[:-3]  # CPFE and SA sow their maps with the caller's leading dims
        return F.pyramid_feature_attention(
            low, high,
            cpfe=keep_leading(self.cpfe, lead),
            high_proj=partial(cna, conv=self.high_conv, norm=self.high_bn),
            low_proj=partial(cna, conv=self.low_conv, norm=self.low_bn),
            spatial_map=keep_leading(self.sa.attention_map, lead),
            head=self.head_conv,
            gate=p.gate,
        )
