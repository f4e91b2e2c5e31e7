"""PFANet (Zhao and Wu, CVPR 2019) as Flax linen modules (thin wrappers over functional)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_feature_map
from attention_jax.functional._batch import keep_leading
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.linen._maps import call_and_sow, sow_maps, wants_maps
from attention_jax.linen.layers import batch_norm, conv
from attention_jax.plans import (
    ContextAwarePyramidPlan,
    PyramidFeatureAttentionPlan,
    PyramidSpatialAttentionPlan,
)

__all__ = ["ContextAwarePyramid", "PyramidSpatialAttention", "PyramidFeatureAttention"]


class ContextAwarePyramid(nn.Module):
    """PFANet's context-aware pyramid (CPFE) plus its channel-wise attention (CA), linen.

    Zhao and Wu, "Pyramid Feature Attention Network for Saliency Detection", CVPR 2019.
    Input (..., H, W, C) -> output (..., H, W, out_channels) (= C by default, which is what the
    registry name ``pfa`` builds). Branches: ``conv0`` (1x1) and ``conv{i}`` (3x3, dilation
    ``dilations[i-1]``; the paper's 3, 5, 7), each ``out_channels / (1 + len(dilations))``
    wide, concatenated, ``bn`` + ReLU; then, with ``channel_attention``, the paper's SE-like CA:
    ``ca_fc1`` (1x1, -> R) + ReLU, ``ca_fc2`` (1x1, -> out) + sigmoid, rescale. The paper's CA
    reduces by 4: pass ``rd_ratio=0.25, rd_divisor=1`` (the family default is 1/16).

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same): with
    ``channel_attention`` (the default), ``channel_weights`` (N, 1, 1, out_channels), CA's gate
    on the concatenated pyramid; none without it.

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics). ``train=False``
    (default) normalises with the running statistics; ``train=True`` with the batch's, updating
    the running ones: ``apply(v, x, train=True, mutable=["batch_stats"])``.
    """

    channels: int
    out_channels: int | None = None
    dilations: Sequence[int] = (3, 5, 7)
    channel_attention: bool = True
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    act: Activation = "relu"
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = ContextAwarePyramidPlan.create(
            self.channels, out_channels=self.out_channels, dilations=self.dilations,
            channel_attention=self.channel_attention, rd_ratio=self.rd_ratio,
            rd_channels=self.rd_channels, rd_divisor=self.rd_divisor, act=self.act,
            gate=self.gate)
        conv_ = partial(conv, dtype=self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision)
        self.conv0 = conv_(p.branch_channels, 1, use_bias=False,
                            # XLA's convolution, not the CPU's matmul form: in this module
                            # (1x1 -> BatchNorm -> concatenated with the dilated branches) the
                            # matmul made forward+backward 1.2-1.3x slower (batch 32, 28x28x64,
                            # Intel Xeon, 2026-12-02), though alone it is 2.7x faster.
                            conv_general_dilated=jax.lax.conv_general_dilated)
        for i, d in enumerate(p.dilations, start=1):
            setattr(self, f"conv{i}", conv_(p.branch_channels, 3, padding=d, kernel_dilation=d,
                                            use_bias=False,
                                            conv_general_dilated=conv_general_dilated))
        self.bn = batch_norm(dtype=self.dtype, param_dtype=self.param_dtype)
        if p.channel_attention:
            self.ca_fc1 = conv_(p.rd_channels, 1)
            self.ca_fc2 = conv_(p.out_channels, 1)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: BatchNorm batch statistics. Returns (..., H, W, C')."""
        p = self.plan
        check_feature_map("ContextAwarePyramid", "x", x, p.channels)
        ca = p.channel_attention
        return call_and_sow(
            self, F.context_aware_pyramid, x,
            convs=[getattr(self, f"conv{i}") for i in range(len(p.dilations) + 1)],
            norm=partial(self.bn, use_running_average=not train), act=p.act,
            reduce=self.ca_fc1 if ca else None, expand=self.ca_fc2 if ca else None, gate=p.gate,
        )


class PyramidSpatialAttention(nn.Module):
    """PFANet's spatial attention: (1xk, kx1) and (kx1, 1xk) conv branches -> sigmoid, linen.

    Zhao and Wu, CVPR 2019 (official code: every conv followed by BatchNorm and ReLU). Input
    (N, H, W, C) -> output (..., H, W, C): ``x * map(guide)``, where the (N, H, W, 1) map is
    computed from ``guide`` (default ``x``; in PFANet the high-level features guide the
    low-level ones). Parameters: ``b1_conv1`` (1xk, C -> mid), ``b1_bn1``, ``b1_conv2``
    (kx1, mid -> 1), ``b1_bn2`` and the mirrored ``b2_*``; k = ``kernel_size`` (paper: 9),
    mid = ``mid_channels`` (default C / 2, as the official code).

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``spatial_map`` (N, H, W, 1), the gate computed from ``guide`` that multiplies ``x``.

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics). ``train=False``
    (default) normalises with the running statistics; ``train=True`` with the batch's, updating
    the running ones: ``apply(v, x, train=True, mutable=["batch_stats"])``.
    """

    channels: int
    kernel_size: int = 9
    mid_channels: int | None = None
    act: Activation = "relu"
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = PyramidSpatialAttentionPlan.create(
            self.channels, kernel_size=self.kernel_size, mid_channels=self.mid_channels,
            act=self.act, gate=self.gate)
        conv_ = partial(conv, dtype=self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision)
        bn = partial(batch_norm, dtype=self.dtype, param_dtype=self.param_dtype)
        row, col = (p.row_kernel, p.row_padding), (p.col_kernel, p.col_padding)
        self.b1_conv1, self.b1_bn1 = conv_(p.mid_channels, row[0], padding=row[1]), bn()
        self.b1_conv2, self.b1_bn2 = conv_(1, col[0], padding=col[1]), bn()
        self.b2_conv1, self.b2_bn1 = conv_(p.mid_channels, col[0], padding=col[1]), bn()
        self.b2_conv2, self.b2_bn2 = conv_(1, row[0], padding=row[1]), bn()

    def attention_map(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: BatchNorm mode. Returns the (..., H, W, 1) map."""
        p = self.plan
        check_feature_map("PyramidSpatialAttention", "x", x, p.channels)
        ura = not train

        def stage(conv, bn):
            return conv, partial(bn, use_running_average=ura)

        branches = [[stage(self.b1_conv1, self.b1_bn1), stage(self.b1_conv2, self.b1_bn2)],
                    [stage(self.b2_conv1, self.b2_bn1), stage(self.b2_conv2, self.b2_bn2)]]
        m = F.pyramid_spatial_map(x, branches=branches, act=p.act, gate=p.gate)
        if wants_maps(self):
            sow_maps(self, {"spatial_map": m})
        return m

    def __call__(self, x: jax.Array, *, guide: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        """Args: x (..., H, W, Cx); guide (..., H, W, C) or None (x). Returns (..., H, W, Cx)."""
        check_feature_map("PyramidSpatialAttention", "x", x)  # the map checks its input
        return F.rescale(x, self.attention_map(x if guide is None else guide, train=train))


class PyramidFeatureAttention(nn.Module):
    """PFANet saliency head: (low, high)-level features -> one-channel saliency map, linen.

    Zhao and Wu, CVPR 2019 (official code): high (N, h, w, Ch) -> ``cpfe``
    (``ContextAwarePyramid`` with CA, ``features`` per branch) -> ``high_conv`` (1x1 -> mid) +
    ``high_bn`` + ReLU -> bilinear resize to the low-level size; low (N, H, W, Cl) ->
    ``low_conv`` (3x3 -> mid) + ``low_bn`` + ReLU, rescaled by ``sa`` (``PyramidSpatialAttention``
    computed from the high-level branch); ``head_conv`` (3x3, 2 mid -> 1) on their
    concatenation, then ``gate`` (sigmoid; ``"identity"`` gives logits for a BCE loss).
    Output (N, H, W, 1). One low- and one high-level input: concatenate several levels (C1-C2,
    C3-C5 in the paper) before calling if wanted.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same): none
    of its own; its parts sow under their names: ``cpfe`` ``channel_weights`` (N, 1, 1, (1 +
    len(dilations)) * features) and ``sa`` ``spatial_map`` (N, H, W, 1).

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics). ``train=False``
    (default) normalises with the running statistics; ``train=True`` with the batch's, updating
    the running ones: ``apply(v, x, train=True, mutable=["batch_stats"])``.
    """

    low_channels: int
    high_channels: int
    features: int = 32
    mid_channels: int = 64
    dilations: Sequence[int] = (3, 5, 7)
    kernel_size: int = 9
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    act: Activation = "relu"
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = PyramidFeatureAttentionPlan.create(
            self.low_channels, self.high_channels, features=self.features,
            mid_channels=self.mid_channels, dilations=self.dilations,
            kernel_size=self.kernel_size, rd_ratio=self.rd_ratio, rd_channels=self.rd_channels,
            rd_divisor=self.rd_divisor, act=self.act, gate=self.gate)
        mid = p.mid_channels
        common = {"dtype": self.dtype, "param_dtype": self.param_dtype,
                  "precision": self.precision}
        conv_ = partial(conv, **common)
        bn = partial(batch_norm, dtype=self.dtype, param_dtype=self.param_dtype)
        self.cpfe = ContextAwarePyramid(
            p.high_channels, out_channels=p.pyramid_channels, dilations=self.dilations,
            rd_ratio=self.rd_ratio, rd_channels=self.rd_channels, rd_divisor=self.rd_divisor,
            act=self.act, **common)
        self.high_conv, self.high_bn = conv_(mid, 1), bn()
        self.low_conv, self.low_bn = conv_(mid, 3, padding=1), bn()
        self.sa = PyramidSpatialAttention(mid, kernel_size=self.kernel_size, act=self.act,
                                          **common)
        self.head_conv = conv_(1, 3, padding=1)

    def __call__(self, low: jax.Array, high: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: low (..., H, W, Cl); high (..., h, w, Ch); train: BN mode. Returns (..., H, W, 1).

        ``low`` and ``high`` have the same leading dims.
        """
        p, fn, ura = self.plan, "PyramidFeatureAttention", not train
        check_feature_map(fn, "low", low, p.low_channels)
        check_feature_map(fn, "high", high, p.high_channels)
        cna = partial(F.conv_norm_act, act=p.act)
        lead = low.shape[:-3]  # CPFE and SA sow their maps with the caller's leading dims
        return F.pyramid_feature_attention(
            low, high,
            cpfe=keep_leading(partial(self.cpfe, train=train), lead),
            high_proj=partial(cna, conv=self.high_conv,
                              norm=partial(self.high_bn, use_running_average=ura)),
            low_proj=partial(cna, conv=self.low_conv,
                             norm=partial(self.low_bn, use_running_average=ura)),
            spatial_map=keep_leading(partial(self.sa.attention_map, train=train), lead),
            head=self.head_conv,
            gate=p.gate,
        )
