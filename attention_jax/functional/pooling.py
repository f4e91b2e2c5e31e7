"""Pooling descriptors used by channel, spatial and hybrid attention (NHWC).

Means accumulate in float32 and are cast back to the input's dtype, so bf16/fp16 feature maps
with large values give finite, accurate descriptors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax._validation import check_nhwc
from attention_jax.functional._numerics import mean

__all__ = [
    "global_avg_pool",
    "global_max_pool",
    "channel_avg_pool",
    "channel_max_pool",
    "channel_avg_max_pool",
]


def global_avg_pool(x: jax.Array, *, keepdims: bool = False) -> jax.Array:
    """Global average pooling over height and width (the SE "squeeze").

    Args:
      x: (N, H, W, C) feature map.
      keepdims: keep the pooled axes as size 1.

    Returns:
      (N, C), or (N, 1, 1, C) with ``keepdims=True``; dtype of ``x``.
    """
    check_nhwc("global_avg_pool", "x", x)
    return mean(x, (1, 2), keepdims=keepdims)


def global_max_pool(x: jax.Array, *, keepdims: bool = False) -> jax.Array:
    """Global max pooling over height and width.

    Args:
      x: (N, H, W, C) feature map.
      keepdims: keep the pooled axes as size 1.

    Returns:
      (N, C), or (N, 1, 1, C) with ``keepdims=True``; dtype of ``x``.
    """
    check_nhwc("global_max_pool", "x", x)
    return jnp.max(x, axis=(1, 2), keepdims=keepdims)


def channel_avg_pool(x: jax.Array, *, keepdims: bool = True) -> jax.Array:
    """Average over channels at every pixel (half of the CBAM spatial descriptor).

    Args:
      x: (N, H, W, C) feature map.
      keepdims: keep the channel axis as size 1.

    Returns:
      (N, H, W, 1), or (N, H, W) with ``keepdims=False``; dtype of ``x``.
    """
    check_nhwc("channel_avg_pool", "x", x)
    return mean(x, -1, keepdims=keepdims)


def channel_max_pool(x: jax.Array, *, keepdims: bool = True) -> jax.Array:
    """Maximum over channels at every pixel.

    Args:
      x: (N, H, W, C) feature map.
      keepdims: keep the channel axis as size 1.

    Returns:
      (N, H, W, 1), or (N, H, W) with ``keepdims=False``; dtype of ``x``.
    """
    check_nhwc("channel_max_pool", "x", x)
    return jnp.max(x, axis=-1, keepdims=keepdims)


def channel_avg_max_pool(x: jax.Array) -> jax.Array:
    """CBAM's spatial descriptor: channel-wise average and max, concatenated (avg first).

    The order follows the paper and timm (``[AvgPool(F); MaxPool(F)]``); the official CBAM code
    stacks max first, so its 7x7 kernel's two input channels are swapped relative to ours.

    Args:
      x: (N, H, W, C) feature map.

    Returns:
      (N, H, W, 2): channel 0 the mean, channel 1 the max; dtype of ``x``.
    """
    check_nhwc("channel_avg_max_pool", "x", x)
    return jnp.concatenate([mean(x, -1, keepdims=True), jnp.max(x, axis=-1, keepdims=True)], -1)
