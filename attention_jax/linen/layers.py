"""The layers every linen mechanism is built from, each convention spelled once.

``batch_norm``: BatchNorm with PyTorch's defaults, so converted weights and statistics behave
as in PyTorch. ``conv``: a convolution with PyTorch's explicit padding (``padding=1`` pads one
pixel on every side; Flax's default is ``"SAME"``). Every mechanism conv goes through ``conv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax._types import Dtype, PrecisionLike
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.plans import conv_padding

__all__ = ["batch_norm", "conv"]

BN_MOMENTUM = 0.9
"""Flax's BatchNorm momentum is PyTorch's ``1 - momentum``: 0.9 here is torch's default 0.1."""


class BatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` that leaves its running statistics alone on an empty batch.

    An input with no values (N, H or W = 0) has no batch statistics: Flax would average them
    to NaN into ``mean``/``var``. Here it is normalised with the running statistics (its output
    is empty either way) and they stay as they are, as in PyTorch.
    """

    @nn.compact
    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        if x.size == 0:
            use_running_average = True
        return super().__call__(x, use_running_average, mask=mask)


def batch_norm(
    *,
    momentum: float = BN_MOMENTUM,
    epsilon: float = 1e-5,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
    **kw: Any,
) -> nn.BatchNorm:
    """BatchNorm over the last axis with PyTorch's defaults (``torch.nn.BatchNorm2d``).

    Momentum 0.9 (Flax's convention, torch's 0.1), eps 1e-5, and the two-pass batch variance
    ``mean((x - mean(x))^2)`` that PyTorch computes: Flax's default ``mean(x^2) - mean(x)^2``
    cancels catastrophically when the batch is near-constant (a large mean, a small spread).
    One difference stays: the running variance is updated with the biased batch variance,
    where PyTorch uses the unbiased one (a factor n / (n - 1), n values per channel). An empty
    batch leaves the running statistics unchanged (PyTorch's behaviour; Flax's would be NaN).
    Call the layer as ``bn(x, use_running_average=not train)``.

    Args:
      momentum: running-statistics decay (Flax's convention).
      epsilon: added to the variance.
      dtype: computation dtype (None: the input's).
      param_dtype: dtype of ``scale``/``bias`` and the running statistics.
      name: the layer's name (None inside ``setup``, where the attribute names it).
      **kw: other ``flax.linen.BatchNorm`` fields (``scale_init``, ``use_bias``, ...).

    Returns:
      An unbound ``nn.BatchNorm``; on (..., C) it returns (..., C) and keeps ``mean``/``var``
      in ``batch_stats``.
    """
    return BatchNorm(use_running_average=None, momentum=momentum, epsilon=epsilon,
                        use_fast_variance=False, dtype=dtype, param_dtype=param_dtype,
                        name=name, **kw)


def conv(
    features: int,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: Any = 0,
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    use_bias: bool = True,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    precision: PrecisionLike = None,
    name: str | None = None,
    **kw: Any,
) -> nn.Conv:
    """A convolution (NHWC, kernel (kh, kw, in / groups, out)) with PyTorch's padding.

    Args:
      features: output channels.
      kernel_size: an int k (a k x k 2D conv, as ``torch.nn.Conv2d``) or one size per spatial
        axis (``(k,)`` is a 1D conv).
      strides: an int or one per spatial axis.
      padding: as ``torch.nn.Conv2d``: an int (every side), one int per spatial axis (both
        sides), explicit ``(lo, hi)`` pairs, or a Flax padding string (``"SAME"``, ...).
        Default 0 (PyTorch's; Flax's own default is ``"SAME"``).
      kernel_dilation: an int or one per spatial axis.
      feature_group_count: groups (``in`` and ``features`` divisible by it).
      use_bias: add a learned bias.
      dtype: computation dtype (None: the input's).
      param_dtype: dtype of ``kernel`` and ``bias``.
      precision: ``jax.lax.Precision`` of the convolution.
      name: the layer's name (None inside ``setup``).
      **kw: other ``flax.linen.Conv`` fields (``kernel_init``, ``bias_init``, ...);
        ``conv_general_dilated`` defaults to ``attention_jax.functional.convolution``'s, XLA's
        convolution with faster forms on the CPU.

    Returns:
      An unbound ``nn.Conv`` mapping (N, *spatial, in) -> (N, *spatial', features).
    """
    ks = (int(kernel_size),) * 2 if isinstance(kernel_size, int) else tuple(kernel_size)
    kw.setdefault("conv_general_dilated", conv_general_dilated)  # the CPU forms
    return nn.Conv(features, ks, strides=strides, padding=conv_padding(padding, len(ks)),
                   kernel_dilation=kernel_dilation, feature_group_count=feature_group_count,
                   use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, precision=precision,
                   name=name, **kw)
