"""PFANet forwards (Zhao and Wu, CVPR 2019): context-aware pyramid, spatial attention, head.

Each function takes the feature maps plus the learned layers as plain callables, so the linen
and nnx modules share one forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from attention_jax._types import Layer
from attention_jax._validation import (
    check_nhwc,
    fail,
)
from attention_jax.functional._batch import NHWC, batch_dims
from attention_jax.functional.channel import squeeze_excite
from attention_jax.functional.gating import _identity, get_act, get_gate, rescale

__all__ = ["context_aware_pyramid", "pyramid_spatial_map", "pyramid_feature_attention"]


@batch_dims(x=NHWC)
def context_aware_pyramid(
    x: jax.Array,
    *,
    convs: Sequence[Layer],
    norm: Layer | None = None,
    act: str | Layer = "relu",
    reduce: Layer | None = None,
    expand: Layer | None = None,
    gate: str | Layer = "sigmoid",
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Context-aware pyramid feature extraction (CPFE): parallel convs, concat, norm, act.

    Zhao and Wu, "Pyramid Feature Attention Network for Saliency Detection", CVPR 2019: a 1x1
    conv and 3x3 convs with dilation 3, 5, 7 on a high-level feature map, concatenated along
    channels (in the order given), then BatchNorm and ReLU. With ``reduce`` and ``expand`` the
    paper's channel-wise attention (CA) follows: ``squeeze_excite(y, reduce, expand, act,
    gate)``.

    Args:
      x: (N, H, W, Cin) high-level feature map.
      convs: B >= 1 layers, each (N, H, W, Cin) -> (N, H, W, C_b).
      norm: layer on the (N, H, W, sum C_b) concatenation (BatchNorm), or None.
      act: activation (name or callable).
      reduce: CA layer (N, 1, 1, C) -> (N, 1, 1, R), C = sum C_b, or None (no CA).
      expand: CA layer (N, 1, 1, R) -> (N, 1, 1, C), or None (with ``reduce``).
      gate: CA gate (name or callable).
      return_maps: also return the attention map (see Returns).

    Returns:
      (N, H, W, sum_b C_b), dtype of ``x`` (layers may compute in a wider dtype); with
      ``return_maps`` a pair (output, maps) with, when CA is on, ``"channel_weights"``
      (N, 1, 1, sum_b C_b), CA's gate (no maps without CA).
    """
    fn = "context_aware_pyramid"
    check_nhwc(fn, "x", x)
    convs = list(convs)
    if not convs:
        raise fail(fn, "convs", "a non-empty sequence of layers", "an empty sequence")
    feats = [c(x) for c in convs]
    if len({f.shape[:-1] for f in feats}) != 1:
        raise fail(fn, "convs", "layers with one output size (N, H, W)",
                   sorted({f.shape for f in feats}))
    if (reduce is None) != (expand is None):
        raise fail(fn, "reduce and expand", "both given or both None",
                   f"reduce={reduce!r}, expand={expand!r}")
    y = get_act(act)((norm or _identity)(jnp.concatenate(feats, axis=-1))).astype(x.dtype)
    if reduce is None:
        return (y, {}) if return_maps else y
    return squeeze_excite(y, reduce=reduce, expand=expand, act=act, gate=gate,
                          return_maps=return_maps)


@batch_dims(x=NHWC)
def pyramid_spatial_map(
    x: jax.Array,
    *,
    branches: Sequence[Sequence[tuple[Layer, Layer | None]]],
    act: str | Layer = "relu",
    gate: str | Layer = "sigmoid",
) -> jax.Array:
    """PFANet's spatial attention map: parallel (1xk then kx1) and (kx1 then 1xk) conv branches.

    Zhao and Wu, CVPR 2019, Sec. 3.3 (official code: each conv followed by BatchNorm and ReLU;
    the two branches are added and gated by a sigmoid).

    Args:
      x: (N, H, W, C) feature map the map is computed from.
      branches: sequence of branches; each a sequence of ``(conv, norm)`` pairs applied as
        ``act(norm(conv(h)))``; every branch must end with one channel.
      act: activation after each norm (name or callable).
      gate: gate on the summed branches (name or callable).

    Returns:
      (N, H, W, 1) attention map, dtype of ``x``.
    """
    fn = "pyramid_spatial_map"
    check_nhwc(fn, "x", x)
    branches = [list(b) for b in branches]
    if not branches or any(not b for b in branches):
        raise fail(fn, "branches", "a non-empty sequence of non-empty branches",
                   [len(b) for b in branches])
    act_fn, gate_fn = get_act(act), get_gate(gate)
    total = None
    for branch in branches:
        h = x
        for conv, norm in branch:
            h = act_fn((norm or _identity)(conv(h)))
        if h.shape != (*x.shape[:3], 1):
            raise fail(fn, "branches", f"branches returning shape {(*x.shape[:3], 1)}",
                       f"shape {tuple(h.shape)}")
        total = h if total is None else total + h
    return gate_fn(total).astype(x.dtype)


@batch_dims(low=NHWC, high=NHWC)
def pyramid_feature_attention(
    low: jax.Array,
    high: jax.Array,
    *,
    cpfe: Layer,
    high_proj: Layer,
    low_proj: Layer,
    spatial_map: Layer,
    head: Layer,
    gate: str | Layer = "sigmoid",
) -> jax.Array:
    """PFANet saliency head: context-aware high-level branch guides the low-level branch.

    Zhao and Wu, CVPR 2019 (official code): ``h = high_proj(cpfe(high))``,
    bilinearly resized to the low-level size (half-pixel centres, as PyTorch's
    ``interpolate(align_corners=False)``); ``l = low_proj(low) * spatial_map(h)``; the
    saliency map is ``gate(head(concat(l, h)))``.

    Args:
      low: (N, H, W, Cl) low-level features.
      high: (N, h, w, Ch) high-level features (any smaller or equal size).
      cpfe: layer (N, h, w, Ch) -> (N, h, w, Cp) (context-aware pyramid, then its
        channel-wise attention).
      high_proj: layer (N, h, w, Cp) -> (N, h, w, D).
      low_proj: layer (N, H, W, Cl) -> (N, H, W, D').
      spatial_map: layer (N, H, W, D) -> (N, H, W, 1) attention map.
      head: layer (N, H, W, D' + D) -> (N, H, W, 1) saliency logits.
      gate: gate on the logits (name or callable; ``"identity"`` returns logits).

    Returns:
      (N, H, W, 1) saliency map, dtype of ``low``.
    """
    fn = "pyramid_feature_attention"
    check_nhwc(fn, "low", low)
    check_nhwc(fn, "high", high)
    if low.shape[0] != high.shape[0]:
        raise fail(fn, "high", f"batch size {low.shape[0]} (as low)", f"shape {high.shape}")
    if high.shape[1] > low.shape[1] or high.shape[2] > low.shape[2]:
        raise fail(fn, "high", f"no larger than low's size {low.shape[1:3]}",
                   f"shape {high.shape}")
    h = high_proj(cpfe(high))
    n, hh, ww = low.shape[:3]
    if h.shape[1:3] != (hh, ww):
        h = jax.image.resize(h, (n, hh, ww, h.shape[-1]), method="bilinear").astype(h.dtype)
    lo = low_proj(low)
    lo = rescale(lo, spatial_map(h))
    logits = head(jnp.concatenate([lo, h], axis=-1))
    return get_gate(gate)(logits).astype(low.dtype)
