"""Convolutional context aggregation (ASPP): the forward, written once for linen and nnx.

The baseline that self-attention over pixels is contrasted with: a fixed set of receptive
fields (atrous rates plus global pooling) instead of input-dependent weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from attention_jax._types import Layer
from attention_jax._validation import check_nhwc, fail
from attention_jax.functional._batch import NHWC, batch_dims
from attention_jax.functional.gating import _identity, get_act
from attention_jax.functional.pooling import global_avg_pool

__all__ = ["conv_norm_act", "aspp"]


@batch_dims(x=NHWC)
def conv_norm_act(
    x: jax.Array,
    *,
    conv: Layer,
    norm: Layer | None = None,
    act: str | Layer = "relu",
) -> jax.Array:
    """Conv -> norm -> activation: the conv-BN-ReLU unit of ASPP, DANet's head and PFANet.

    Args:
      x: (N, H, W, Cin) feature map.
      conv: layer (N, H, W, Cin) -> (N, H', W', C).
      norm: layer on the (N, H', W', C) conv output (BatchNorm, bound to its mode), or None.
      act: activation (name or callable; ``"identity"`` for none).

    Returns:
      (N, H', W', C), dtype of the layers' output.
    """
    check_nhwc("conv_norm_act", "x", x)
    return get_act(act)((norm or _identity)(conv(x)))


@batch_dims(x=NHWC)
def aspp(
    x: jax.Array,
    *,
    branches: Sequence[Layer],
    pool_branch: Layer,
    project: Layer,
) -> jax.Array:
    """Atrous spatial pyramid pooling: parallel branches + image pooling, concat, project.

    Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation" (DeepLabv3),
    2017, Sec. 3.3: a 1x1 conv and three 3x3 atrous convs (rates 6, 12, 18) plus global
    average pooling -> 1x1 conv, each with BatchNorm and ReLU; the pooled branch is upsampled
    to H x W (bilinear from 1x1 is a broadcast), all are concatenated and fused by a 1x1 conv.

    Args:
      x: (N, H, W, C) feature map.
      branches: layers (N, H, W, C) -> (N, H, W, Co) (the 1x1 and atrous branches).
      pool_branch: layer (N, 1, 1, C) -> (N, 1, 1, Co) applied to the global average.
      project: layer (N, H, W, (len(branches) + 1) * Co) -> (N, H, W, Cout).

    Returns:
      (N, H, W, Cout), dtype of ``x``.
    """
    check_nhwc("aspp", "x", x)
    if len(branches) == 0:
        raise fail("aspp", "branches", "a non-empty sequence of layers", "an empty one")
    feats = [b(x) for b in branches]
    pooled = pool_branch(global_avg_pool(x, keepdims=True))
    n, h, w, _ = x.shape
    feats.append(jnp.broadcast_to(pooled, (n, h, w, pooled.shape[-1])).astype(feats[0].dtype))
    return project(jnp.concatenate(feats, -1)).astype(x.dtype)
