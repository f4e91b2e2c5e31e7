"""Convolutional context (ASPP) as Flax nnx modules (thin wrappers over ``functional``)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Dtype, PrecisionLike
from attention_jax._validation import check_nhwc
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.linen.context import _aspp_check

__all__ = ["ASPP"]


class ConvBNAct(nnx.Module):
    """Conv (no bias) -> BatchNorm -> ReLU: (N, H, W, Cin) -> (N, H, W, features), nnx.

    Same parameters as the linen ``ConvBNAct``: ``conv`` and ``bn``.
    """

    def __init__(self, in_features: int, features: int, *, kernel_size: int = 1,
                 dilation: int = 1, act: bool = True, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, precision: PrecisionLike = None,
                 rngs: nnx.Rngs) -> None:
        k, d = kernel_size, dilation
        pad = d * (k - 1) // 2
        self.act = act
        self.conv = nnx.Conv(in_features, features, (k, k), kernel_dilation=(d, d),
                             padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                             param_dtype=param_dtype, precision=precision, rngs=rngs,
                             conv_general_dilated=conv_general_dilated)
        self.bn = nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, Cin). Returns (N, H, W, features)."""
        y = self.bn(self.conv(x))
        return jax.nn.relu(y) if self.act else y


class ASPP(nnx.Module):
    """Atrous spatial pyramid pooling (DeepLabv3, Chen et al. 2017), nnx.

    Input (N, H, W, C) -> output (N, H, W, out_channels or C). Same parameters as the linen
    module: ``b0``, ``b1``.. (one per atrous rate), ``pool``, ``project`` (conv-BN-ReLU each).
    BatchNorm mode via ``module.train()`` / ``module.eval()``.
    """

    def __init__(
        self,
        channels: int,
        *,
        out_channels: int | None = None,
        atrous_rates: Sequence[int] = (6, 12, 18),
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        co = _aspp_check("ASPP", channels, out_channels, atrous_rates)
        cba = partial(ConvBNAct, features=co, dtype=dtype, param_dtype=param_dtype,
                      precision=precision, rngs=rngs)
        self.channels, self.n_branches = channels, len(atrous_rates) + 1
        self.b0 = cba(channels, kernel_size=1)
        for i, r in enumerate(atrous_rates):
            setattr(self, f"b{i + 1}", cba(channels, kernel_size=3, dilation=r))
        self.pool = cba(channels, kernel_size=1)
        self.project = cba(co * self.n_branches + co, kernel_size=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, Co)."""
        check_nhwc("ASPP", "x", x, self.channels)
        branches = [getattr(self, f"b{i}") for i in range(self.n_branches)]
        return F.aspp(x, branches=branches, pool_branch=self.pool, project=self.project)
