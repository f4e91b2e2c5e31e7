"""PFANet (Zhao and Wu, CVPR 2019) as Flax nnx modules (thin wrappers over functional)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_nhwc
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.functional.saliency import _head_widths, _pyramid_widths, _spatial_widths

__all__ = ["ContextAwarePyramid", "PyramidSpatialAttention", "PyramidFeatureAttention"]

# PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here), so converted weights behave;
# the two-pass variance (as PyTorch) stays accurate when the batch statistics are near-constant.
_BN = {"momentum": 0.9, "epsilon": 1e-5, "use_fast_variance": False}


class ContextAwarePyramid(nnx.Module):
    """PFANet's context-aware pyramid (CPFE) plus its channel-wise attention (CA), nnx.

    Input (N, H, W, C) -> output (N, H, W, out_channels) (= C by default: the registry name
    ``pfa``). Same fields and parameters as the linen module: ``conv0`` (1x1), ``conv{i}``
    (3x3, dilation ``dilations[i-1]``), ``bn``, and with ``channel_attention`` ``ca_fc1``,
    ``ca_fc2``. BatchNorm mode via ``module.train()`` / ``module.eval()``.
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
        out, branch, rd = _pyramid_widths("ContextAwarePyramid", channels, out_channels,
                                          dilations, rd_ratio, rd_channels, rd_divisor)
        conv = partial(nnx.Conv, dtype=dtype, param_dtype=param_dtype, precision=precision,
                       rngs=rngs)
        self.channels, self.num_branches = channels, 1 + len(dilations)
        self.channel_attention, self.act, self.gate = channel_attention, act, gate
        self.conv0 = conv(channels, branch, (1, 1), use_bias=False)
        for i, d in enumerate(dilations, start=1):
            setattr(self, f"conv{i}", conv(channels, branch, (3, 3), padding=((d, d), (d, d)),
                                           kernel_dilation=d, use_bias=False,
                                           conv_general_dilated=conv_general_dilated))
        self.bn = nnx.BatchNorm(out, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **_BN)
        if channel_attention:
            self.ca_fc1 = conv(out, rd, (1, 1))
            self.ca_fc2 = conv(rd, out, (1, 1))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C')."""
        check_nhwc("ContextAwarePyramid", "x", x, self.channels)
        convs = [getattr(self, f"conv{i}") for i in range(self.num_branches)]
        y = F.context_aware_pyramid(x, convs=convs, norm=self.bn, act=self.act)
        if not self.channel_attention:
            return y
        return F.squeeze_excite(y, reduce=self.ca_fc1, expand=self.ca_fc2, act=self.act,
                                gate=self.gate)


class PyramidSpatialAttention(nnx.Module):
    """PFANet's spatial attention: (1xk, kx1) and (kx1, 1xk) conv branches -> sigmoid, nnx.

    Input (N, H, W, C) -> output (N, H, W, C): ``x * map(guide)`` with the (N, H, W, 1) map
    computed from ``guide`` (default ``x``). Same fields and parameters as the linen module
    (``b1_conv1``, ``b1_bn1``, ``b1_conv2``, ``b1_bn2``, ``b2_*``).
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
        k, mid = _spatial_widths("PyramidSpatialAttention", channels, kernel_size, mid_channels)
        p = k // 2
        conv = partial(nnx.Conv, dtype=dtype, param_dtype=param_dtype, precision=precision,
                       rngs=rngs)
        bn = partial(nnx.BatchNorm, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **_BN)
        self.channels, self.act, self.gate = channels, act, gate
        row, col = ((1, k), ((0, 0), (p, p))), ((k, 1), ((p, p), (0, 0)))
        self.b1_conv1, self.b1_bn1 = conv(channels, mid, row[0], padding=row[1]), bn(mid)
        self.b1_conv2, self.b1_bn2 = conv(mid, 1, col[0], padding=col[1]), bn(1)
        self.b2_conv1, self.b2_bn1 = conv(channels, mid, col[0], padding=col[1]), bn(mid)
        self.b2_conv2, self.b2_bn2 = conv(mid, 1, row[0], padding=row[1]), bn(1)

    def attention_map(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns the (N, H, W, 1) map."""
        check_nhwc("PyramidSpatialAttention", "x", x, self.channels)
        branches = [[(self.b1_conv1, self.b1_bn1), (self.b1_conv2, self.b1_bn2)],
                    [(self.b2_conv1, self.b2_bn1), (self.b2_conv2, self.b2_bn2)]]
        return F.pyramid_spatial_map(x, branches=branches, act=self.act, gate=self.gate)

    def __call__(self, x: jax.Array, *, guide: jax.Array | None = None) -> jax.Array:
        """Args: x (N, H, W, Cx); guide (N, H, W, C) or None (then x). Returns (N, H, W, Cx)."""
        if guide is None:
            check_nhwc("PyramidSpatialAttention", "x", x, self.channels)
        else:
            check_nhwc("PyramidSpatialAttention", "x", x)
        return F.rescale(x, self.attention_map(x if guide is None else guide))


class PyramidFeatureAttention(nnx.Module):
    """PFANet saliency head: (low, high)-level features -> one-channel saliency map, nnx.

    Inputs low (N, H, W, Cl) and high (N, h, w, Ch) -> output (N, H, W, 1). Same fields and
    parameters as the linen module (``cpfe``, ``high_conv``, ``high_bn``, ``low_conv``,
    ``low_bn``, ``sa``, ``head_conv``).
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
        fn = "PyramidFeatureAttention"
        pyramid = _head_widths(fn, low_channels, high_channels, features, mid_channels,
                               dilations)
        mid = mid_channels
        common = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision}
        conv = partial(nnx.Conv, rngs=rngs, **common)
        bn = partial(nnx.BatchNorm, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **_BN)
        self.low_channels, self.high_channels, self.act, self.gate = (
            low_channels, high_channels, act, gate)
        self.cpfe = ContextAwarePyramid(
            high_channels, out_channels=pyramid, dilations=dilations, rd_ratio=rd_ratio,
            rd_channels=rd_channels, rd_divisor=rd_divisor, act=act, rngs=rngs, **common)
        self.high_conv, self.high_bn = conv(pyramid, mid, (1, 1)), bn(mid)
        self.low_conv = conv(low_channels, mid, (3, 3), padding=((1, 1), (1, 1)))
        self.low_bn = bn(mid)
        self.sa = PyramidSpatialAttention(mid, kernel_size=kernel_size, act=act, rngs=rngs,
                                          **common)
        self.head_conv = conv(2 * mid, 1, (3, 3), padding=((1, 1), (1, 1)))

    def __call__(self, low: jax.Array, high: jax.Array) -> jax.Array:
        """Args: low (N, H, W, Cl); high (N, h, w, Ch). Returns (N, H, W, 1)."""
        fn = "PyramidFeatureAttention"
        check_nhwc(fn, "low", low, self.low_channels)
        check_nhwc(fn, "high", high, self.high_channels)
        act = F.get_act(self.act)
        return F.pyramid_feature_attention(
            low, high,
            cpfe=self.cpfe,
            high_proj=lambda h: act(self.high_bn(self.high_conv(h))),
            low_proj=lambda t: act(self.low_bn(self.low_conv(t))),
            spatial_map=self.sa.attention_map,
            head=self.head_conv,
            gate=self.gate,
        )
