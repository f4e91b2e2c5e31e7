"""Hybrid (channel + spatial) attention forwards: CBAM, BAM, coordinate attention.

Each function takes the feature map plus the learned layers as plain callables (any
``array -> array`` function: a Flax linen or nnx layer, or a closure over explicit weights), so
the linen and nnx modules share one forward. BatchNorm layers are passed in already bound to
their mode (train or eval).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from attention_jax._types import Layer
from attention_jax._validation import check_choice, check_layer_shape, check_nhwc, fail
from attention_jax.functional._batch import NHWC, batch_dims
from attention_jax.functional.gating import _identity, get_act, get_gate, rescale
from attention_jax.functional.pooling import (
    avg_pool_h,
    avg_pool_w,
    channel_avg_max_pool,
    global_avg_pool,
    global_max_pool,
)

__all__ = [
    "cbam_channel_gate",
    "cbam_spatial_gate",
    "cbam",
    "bam",
    "coordinate_attention",
    "BAM_COMBINES",
]


BAM_COMBINES = ("paper", "official")
"""BAM's ways of combining the branches: ``1 + sigmoid(Mc + Ms)`` or ``1 + sigmoid(Mc * Ms)``."""


@batch_dims(x=NHWC)
def cbam_channel_gate(
    x: jax.Array,
    *,
    reduce: Layer,
    expand: Layer,
    act: str | Layer = "relu",
    gate: str | Layer = "sigmoid",
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """CBAM channel attention: shared MLP on avg- and max-pooled descriptors, summed, gated.

    Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018, Eq. 2:
    ``Mc = gate(MLP(AvgPool(x)) + MLP(MaxPool(x)))``, ``MLP = expand(act(reduce(.)))``.

    Args:
      x: (N, H, W, C) feature map.
      reduce: layer (N, 1, 1, C) -> (N, 1, 1, R).
      expand: layer (N, 1, 1, R) -> (N, 1, 1, C).
      act: hidden activation (name or callable).
      gate: gate (name or callable).
      return_maps: also return the attention map (see Returns).

    Returns:
      (N, H, W, C) ``x * Mc``, dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"channel_weights"`` (N, 1, 1, C), ``Mc``.
    """
    check_nhwc("cbam_channel_gate", "x", x)
    act_fn, gate_fn = get_act(act), get_gate(gate)

    def mlp(s):
        return expand(act_fn(reduce(s)))

    logits = mlp(global_avg_pool(x, keepdims=True)) + mlp(global_max_pool(x, keepdims=True))
    w = gate_fn(logits)
    y = rescale(x, w)
    return (y, {"channel_weights": w}) if return_maps else y


@batch_dims(x=NHWC)
def cbam_spatial_gate(
    x: jax.Array,
    *,
    conv: Layer,
    norm: Layer | None = None,
    gate: str | Layer = "sigmoid",
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """CBAM spatial attention: channel-wise [avg; max] -> conv (k x k) -> norm -> gate -> rescale.

    Woo et al., ECCV 2018, Eq. 3, with the BatchNorm of the official code (``BasicConv`` with
    ``relu=False``). The gate is always applied to the conv output (a known JAX port returns
    the raw logits). Descriptor order is [avg; max] as in the paper and timm.

    Args:
      x: (N, H, W, C) feature map.
      conv: layer (N, H, W, 2) -> (N, H, W, 1) ("same" padding).
      norm: layer on the (N, H, W, 1) map (BatchNorm), or None.
      gate: gate (name or callable).
      return_maps: also return the attention map (see Returns).

    Returns:
      (N, H, W, C) ``x * Ms``, dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"spatial_map"`` (N, H, W, 1), ``Ms``.
    """
    fn = "cbam_spatial_gate"
    check_nhwc(fn, "x", x)
    gate_fn = get_gate(gate)
    logits = (norm or _identity)(conv(channel_avg_max_pool(x)))
    check_layer_shape(fn, "conv", logits, (*x.shape[:3], 1))
    m = gate_fn(logits)
    y = rescale(x, m)
    return (y, {"spatial_map": m}) if return_maps else y


@batch_dims(x=NHWC)
def cbam(
    x: jax.Array,
    *,
    reduce: Layer,
    expand: Layer,
    conv: Layer,
    norm: Layer | None = None,
    act: str | Layer = "relu",
    gate: str | Layer = "sigmoid",
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """CBAM: channel gate then spatial gate, in series.

    Woo et al., ECCV 2018, Eq. 1: ``x' = Mc(x) * x``, ``out = Ms(x') * x'``.

    Args:
      x: (N, H, W, C) feature map.
      reduce, expand: the channel gate's shared MLP, (N, 1, 1, C) -> (N, 1, 1, R) -> (N, 1, 1, C).
      conv: the spatial gate's conv, (N, H, W, 2) -> (N, H, W, 1).
      norm: the spatial gate's norm on (N, H, W, 1), or None.
      act: channel MLP activation (name or callable).
      gate: gate of both sub-modules (name or callable).
      return_maps: also return the attention maps (see Returns).

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"channel_weights"`` (N, 1, 1, C), ``Mc``, and ``"spatial_map"`` (N, H, W, 1), ``Ms``.
    """
    check_nhwc("cbam", "x", x)
    if not return_maps:
        y = cbam_channel_gate(x, reduce=reduce, expand=expand, act=act, gate=gate)
        return cbam_spatial_gate(y, conv=conv, norm=norm, gate=gate)
    y, channel = cbam_channel_gate(x, reduce=reduce, expand=expand, act=act, gate=gate,
                                   return_maps=True)
    out, spatial = cbam_spatial_gate(y, conv=conv, norm=norm, gate=gate, return_maps=True)
    return out, {**channel, **spatial}


@batch_dims(x=NHWC)
def bam(
    x: jax.Array,
    *,
    fc1: Layer,
    bn1: Layer,
    fc2: Layer,
    conv_reduce: Layer,
    bn_reduce: Layer,
    convs_di: Sequence[Layer],
    bns_di: Sequence[Layer],
    conv_final: Layer,
    act: str | Layer = "relu",
    gate: str | Layer = "sigmoid",
    combine: str = "paper",
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Bottleneck attention module: parallel channel and spatial branches, residual gate.

    Park et al., "BAM: Bottleneck Attention Module", BMVC 2018. Layers as in the official code:
    channel branch ``Mc = fc2(act(bn1(fc1(AvgPool(x)))))`` (N, 1, 1, C); spatial branch
    ``Ms = conv_final(act(bn(conv_di(... act(bn_reduce(conv_reduce(x)))))))`` (N, H, W, 1).
    ``combine="paper"`` (Eq. 1-2): ``x * (1 + gate(Mc + Ms))``; ``combine="official"``
    (the authors' released code): ``x * (1 + gate(Mc * Ms))``.

    Args:
      x: (N, H, W, C) feature map.
      fc1: layer (N, 1, 1, C) -> (N, 1, 1, R); bn1: norm on it; fc2: (N, 1, 1, R) -> (N, 1, 1, C).
      conv_reduce: layer (N, H, W, C) -> (N, H, W, R); bn_reduce: norm on it.
      convs_di: dilated 3x3 layers (N, H, W, R) -> (N, H, W, R); bns_di: one norm each.
      conv_final: layer (N, H, W, R) -> (N, H, W, 1).
      act: activation after every norm (name or callable).
      gate: gate (name or callable).
      combine: ``"paper"`` (sum) or ``"official"`` (product).
      return_maps: also return the attention maps (see Returns).

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"channel_logits"`` (N, 1, 1, C), ``Mc``; ``"spatial_logits"`` (N, H, W, 1), ``Ms``;
      and ``"attention_map"`` (N, H, W, C), ``gate(Mc + Ms)`` (or ``gate(Mc * Ms)``), so that
      the output is ``x * (1 + attention_map)``.
    """
    fn = "bam"
    check_nhwc(fn, "x", x)
    check_choice(fn, "combine", combine, BAM_COMBINES)
    convs_di, bns_di = list(convs_di), list(bns_di)
    if len(convs_di) != len(bns_di):
        raise fail(fn, "bns_di", f"{len(convs_di)} layers (one per dilated conv)", len(bns_di))
    act_fn, gate_fn = get_act(act), get_gate(gate)
    n, h, w, c = x.shape
    mc = fc2(act_fn(bn1(fc1(global_avg_pool(x, keepdims=True)))))
    check_layer_shape(fn, "fc2", mc, (n, 1, 1, c))
    s = act_fn(bn_reduce(conv_reduce(x)))
    for conv, norm in zip(convs_di, bns_di, strict=True):
        s = act_fn(norm(conv(s)))
    ms = conv_final(s)
    check_layer_shape(fn, "conv_final", ms, (n, h, w, 1))
    logits = mc + ms if combine == "paper" else mc * ms
    a = gate_fn(logits)
    y = rescale(x, 1.0 + a)
    if return_maps:
        return y, {"channel_logits": mc, "spatial_logits": ms, "attention_map": a}
    return y


@batch_dims(x=NHWC)
def coordinate_attention(
    x: jax.Array,
    *,
    conv1: Layer,
    norm: Layer,
    conv_h: Layer,
    conv_w: Layer,
    act: str | Layer = "relu",
    gate: str | Layer = "sigmoid",
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Coordinate attention: directional pools, shared transform, two directional gates.

    Hou et al., "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021 (official
    ``CoordAtt``): ``z^h`` (N, H, 1, C) and ``z^w`` (N, 1, W, C) are concatenated along the
    spatial axis (H + W positions), ``f = act(norm(conv1(.)))`` is split back, and
    ``out = x * gate(conv_h(f^h)) * gate(conv_w(f^w))``. The norm sees all H + W positions
    together (its batch statistics mix both directions, as officially).

    Args:
      x: (N, H, W, C) feature map.
      conv1: 1x1 layer (N, H + W, 1, C) -> (N, H + W, 1, R).
      norm: layer on (N, H + W, 1, R) (BatchNorm).
      conv_h: 1x1 layer (N, H, 1, R) -> (N, H, 1, C).
      conv_w: 1x1 layer (N, 1, W, R) -> (N, 1, W, C).
      act: activation of the shared transform (the official code uses h-swish).
      gate: gate (name or callable).
      return_maps: also return the attention maps (see Returns).

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"height_weights"`` (N, H, 1, C), ``gate(conv_h(f^h))``, and ``"width_weights"``
      (N, 1, W, C), ``gate(conv_w(f^w))``.
    """
    fn = "coordinate_attention"
    check_nhwc(fn, "x", x)
    act_fn, gate_fn = get_act(act), get_gate(gate)
    n, h, w, c = x.shape
    z = jnp.concatenate([avg_pool_h(x), jnp.swapaxes(avg_pool_w(x), 1, 2)], axis=1)
    f = act_fn(norm(conv1(z)))
    f_h, f_w = f[:, :h], jnp.swapaxes(f[:, h:], 1, 2)
    a_h, a_w = gate_fn(conv_h(f_h)), gate_fn(conv_w(f_w))
    check_layer_shape(fn, "conv_h", a_h, (n, h, 1, c))
    check_layer_shape(fn, "conv_w", a_w, (n, 1, w, c))
    y = rescale(rescale(x, a_w), a_h)
    return (y, {"height_weights": a_h, "width_weights": a_w}) if return_maps else y
