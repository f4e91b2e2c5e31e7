"""PFANet (Zhao and Wu, CVPR 2019) as Flax linen modules (thin wrappers over functional)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_nhwc
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.functional.saliency import _head_widths, _pyramid_widths, _spatial_widths

__all__ = ["ContextAwarePyramid", "PyramidSpatialAttention", "PyramidFeatureAttention"]

# PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here), so converted weights behave;
# the two-pass variance (as PyTorch) stays accurate when the batch statistics are near-constant.
_BN = {"momentum": 0.9, "epsilon": 1e-5, "use_fast_variance": False}


class ContextAwarePyramid(nn.Module):
    """PFANet's context-aware pyramid (CPFE) plus its channel-wise attention (CA), linen.

    Zhao and Wu, "Pyramid Feature Attention Network for Saliency Detection", CVPR 2019.
    Input (N, H, W, C) -> output (N, H, W, out_channels) (= C by default, which is what the
    registry name ``pfa`` builds). Branches: ``conv0`` (1x1) and ``conv{i}`` (3x3, dilation
    ``dilations[i-1]``; the paper's 3, 5, 7), each ``out_channels / (1 + len(dilations))``
    wide, concatenated, ``bn`` + ReLU; then, with ``channel_attention``, the paper's SE-like CA:
    ``ca_fc1`` (1x1, -> R) + ReLU, ``ca_fc2`` (1x1, -> out) + sigmoid, rescale. The paper's CA
    reduces by 4: pass ``rd_ratio=0.25, rd_divisor=1`` (the family default is 1/16).
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
        out, branch, rd = _pyramid_widths("ContextAwarePyramid", self.channels, self.out_channels,
                                          self.dilations, self.rd_ratio, self.rd_channels,
                                          self.rd_divisor)
        conv = partial(nn.Conv, dtype=self.dtype, param_dtype=self.param_dtype,
                       precision=self.precision)
        self.conv0 = conv(branch, (1, 1), use_bias=False)
        for i, d in enumerate(self.dilations, start=1):
            setattr(self, f"conv{i}", conv(branch, (3, 3), padding=((d, d), (d, d)),
                                           kernel_dilation=d, use_bias=False,
                                           conv_general_dilated=conv_general_dilated))
        self.bn = nn.BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, **_BN)
        if self.channel_attention:
            self.ca_fc1 = conv(rd, (1, 1))
            self.ca_fc2 = conv(out, (1, 1))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: BatchNorm uses batch statistics. Returns (N, H, W, C')."""
        check_nhwc("ContextAwarePyramid", "x", x, self.channels)
        convs = [getattr(self, f"conv{i}") for i in range(len(self.dilations) + 1)]
        y = F.context_aware_pyramid(x, convs=convs, act=self.act,
                                    norm=partial(self.bn, use_running_average=not train))
        if not self.channel_attention:
            return y
        return F.squeeze_excite(y, reduce=self.ca_fc1, expand=self.ca_fc2, act=self.act,
                                gate=self.gate)


class PyramidSpatialAttention(nn.Module):
    """PFANet's spatial attention: (1xk, kx1) and (kx1, 1xk) conv branches -> sigmoid, linen.

    Zhao and Wu, CVPR 2019 (official code: every conv followed by BatchNorm and ReLU). Input
    (N, H, W, C) -> output (N, H, W, C): ``x * map(guide)``, where the (N, H, W, 1) map is
    computed from ``guide`` (default ``x``; in PFANet the high-level features guide the
    low-level ones). Parameters: ``b1_conv1`` (1xk, C -> mid), ``b1_bn1``, ``b1_conv2``
    (kx1, mid -> 1), ``b1_bn2`` and the mirrored ``b2_*``; k = ``kernel_size`` (paper: 9),
    mid = ``mid_channels`` (default C / 2, as the official code).
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
        k, mid = _spatial_widths("PyramidSpatialAttention", self.channels, self.kernel_size,
                                 self.mid_channels)
        p = k // 2
        conv = partial(nn.Conv, dtype=self.dtype, param_dtype=self.param_dtype,
                       precision=self.precision)
        bn = partial(nn.BatchNorm, dtype=self.dtype, param_dtype=self.param_dtype, **_BN)
        row, col = ((1, k), ((0, 0), (p, p))), ((k, 1), ((p, p), (0, 0)))
        self.b1_conv1, self.b1_bn1 = conv(mid, row[0], padding=row[1]), bn()
        self.b1_conv2, self.b1_bn2 = conv(1, col[0], padding=col[1]), bn()
        self.b2_conv1, self.b2_bn1 = conv(mid, col[0], padding=col[1]), bn()
        self.b2_conv2, self.b2_bn2 = conv(1, row[0], padding=row[1]), bn()

    def attention_map(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: BatchNorm mode. Returns the (N, H, W, 1) map."""
        check_nhwc("PyramidSpatialAttention", "x", x, self.channels)
        ura = not train

        def stage(conv, bn):
            return conv, partial(bn, use_running_average=ura)

        branches = [[stage(self.b1_conv1, self.b1_bn1), stage(self.b1_conv2, self.b1_bn2)],
                    [stage(self.b2_conv1, self.b2_bn1), stage(self.b2_conv2, self.b2_bn2)]]
        return F.pyramid_spatial_map(x, branches=branches, act=self.act, gate=self.gate)

    def __call__(self, x: jax.Array, *, guide: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        """Args: x (N, H, W, Cx); guide (N, H, W, C) or None (then x). Returns (N, H, W, Cx)."""
        if guide is None:
            check_nhwc("PyramidSpatialAttention", "x", x, self.channels)
        else:
            check_nhwc("PyramidSpatialAttention", "x", x)
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
        pyramid = _head_widths("PyramidFeatureAttention", self.low_channels, self.high_channels,
                               self.features, self.mid_channels, self.dilations)
        mid = self.mid_channels
        common = {"dtype": self.dtype, "param_dtype": self.param_dtype,
                  "precision": self.precision}
        conv = partial(nn.Conv, **common)
        bn = partial(nn.BatchNorm, dtype=self.dtype, param_dtype=self.param_dtype, **_BN)
        self.cpfe = ContextAwarePyramid(
            self.high_channels, out_channels=pyramid, dilations=self.dilations,
            rd_ratio=self.rd_ratio, rd_channels=self.rd_channels, rd_divisor=self.rd_divisor,
            act=self.act, **common)
        self.high_conv, self.high_bn = conv(mid, (1, 1)), bn()
        self.low_conv, self.low_bn = conv(mid, (3, 3), padding=((1, 1), (1, 1))), bn()
        self.sa = PyramidSpatialAttention(mid, kernel_size=self.kernel_size, act=self.act,
                                          **common)
        self.head_conv = conv(1, (3, 3), padding=((1, 1), (1, 1)))

    def __call__(self, low: jax.Array, high: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: low (N, H, W, Cl); high (N, h, w, Ch); train: BN mode. Returns (N, H, W, 1)."""
        fn = "PyramidFeatureAttention"
        check_nhwc(fn, "low", low, self.low_channels)
        check_nhwc(fn, "high", high, self.high_channels)
        ura = not train
        act = F.get_act(self.act)
        return F.pyramid_feature_attention(
            low, high,
            cpfe=partial(self.cpfe, train=train),
            high_proj=lambda h: act(self.high_bn(self.high_conv(h), use_running_average=ura)),
            low_proj=lambda t: act(self.low_bn(self.low_conv(t), use_running_average=ura)),
            spatial_map=partial(self.sa.attention_map, train=train),
            head=self.head_conv,
            gate=self.gate,
        )
