"""The layers every nnx mechanism is built from, each convention spelled once.

``batch_norm``: BatchNorm with PyTorch's defaults, so converted weights and statistics behave
as in PyTorch. ``conv``: a convolution with PyTorch's explicit padding (``padding=1`` pads one
pixel on every side; Flax's default is ``"SAME"``). Every mechanism conv goes through ``conv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax._types import Dtype, PrecisionLike
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.plans import conv_padding

__all__ = ["batch_norm", "conv"]

BN_MOMENTUM = 0.9
"""Flax's BatchNorm momentum is PyTorch's ``1 - momentum``: 0.9 here is torch's default 0.1."""


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` that leaves its running statistics alone on an empty batch.

    An input with no values (N, H or W = 0) has no batch statistics: Flax would average them
    to NaN into ``mean``/``var``. Here it is normalised with the running statistics (its output
    is empty either way) and they stay as they are, as in PyTorch.
    """

    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        if x.size == 0:
            use_running_average = True
        return super().__call__(x, use_running_average, mask=mask)


def batch_norm(
    num_features: int,
    *,
    momentum: float = BN_MOMENTUM,
    epsilon: float = 1e-5,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
    **kw: Any,
) -> nnx.BatchNorm:
    """BatchNorm over the last axis with PyTorch's defaults (``torch.nn.BatchNorm2d``).

    The same layer as ``attention_jax.linen.layers.batch_norm``: momentum 0.9 (torch's 0.1),
    eps 1e-5, PyTorch's two-pass batch variance (Flax's default one-pass variance cancels
    when the batch is near-constant); the running variance is updated with the biased batch
    variance (PyTorch: unbiased, a factor n / (n - 1)); an empty batch leaves the running
    statistics unchanged (as PyTorch). Train/eval via ``module.train()`` /
    ``module.eval()``.

    Args:
      num_features: channels C.
      momentum: running-statistics decay (Flax's convention).
      epsilon: added to the variance.
      dtype: computation dtype (None: the input's).
      param_dtype: dtype of ``scale``/``bias`` and the running statistics.
      rngs: the module's ``nnx.Rngs``.
      **kw: other ``flax.nnx.BatchNorm`` options (``scale_init``, ``use_bias``, ...).

    Returns:
      An ``nnx.BatchNorm`` mapping (..., C) -> (..., C).
    """
    return BatchNorm(num_features, momentum=momentum, epsilon=epsilon,
                         use_fast_variance=False, dtype=dtype, param_dtype=param_dtype,
                         rngs=rngs, **kw)


def conv(
    in_features: int,
    out_features: int,
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
    rngs: nnx.Rngs,
    **kw: Any,
) -> nnx.Conv:
    """A convolution (NHWC, kernel (kh, kw, in / groups, out)) with PyTorch's padding.

    The same layer as ``attention_jax.linen.layers.conv``.

    Args:
      in_features: input channels.
      out_features: output channels.
      kernel_size: an int k (a k x k 2D conv, as ``torch.nn.Conv2d``) or one size per spatial
        axis (``(k,)`` is a 1D conv).
      strides: an int or one per spatial axis.
      padding: as ``torch.nn.Conv2d``: an int (every side), one int per spatial axis (both
        sides), explicit ``(lo, hi)`` pairs, or a Flax padding string (``"SAME"``, ...).
        Default 0 (PyTorch's; Flax's own default is ``"SAME"``).
      kernel_dilation: an int or one per spatial axis.
      feature_group_count: groups (``in_features`` and ``out_features`` divisible by it).
      use_bias: add a learned bias.
      dtype: computation dtype (None: the input's).
      param_dtype: dtype of ``kernel`` and ``bias``.
      precision: ``jax.lax.Precision`` of the convolution.
      rngs: the module's ``nnx.Rngs``.
      **kw: other ``flax.nnx.Conv`` options (``kernel_init``, ``bias_init``, ...);
        ``conv_general_dilated`` defaults to ``attention_jax.functional.convolution``'s, XLA's
        convolution with faster forms on the CPU.

    Returns:
      An ``nnx.Conv`` mapping (N, *spatial, in_features) -> (N, *spatial', out_features).
    """
    ks = (int(kernel_size),) * 2 if isinstance(kernel_size, int) else tuple(kernel_size)
    kw.setdefault("conv_general_dilated", conv_general_dilated)  # the CPU forms
    return nnx.Conv(in_features, out_features, ks, strides=strides,
                    padding=conv_padding(padding, len(ks)), kernel_dilation=kernel_dilation,
                    feature_group_count=feature_group_count, use_bias=use_bias, dtype=dtype,
                    param_dtype=param_dtype, precision=precision, rngs=rngs, **kw)
