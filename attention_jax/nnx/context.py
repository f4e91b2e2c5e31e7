"""Convolutional context (ASPP) as Flax nnx modules (thin wrappers over ``functional``)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_feature_map
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.nnx.layers import batch_norm, conv
from attention_jax.plans import ASPPPlan, same_padding

__all__ = ["ASPP"]


class ConvBNAct(nnx.Module):
    """Conv (no bias) -> BatchNorm -> act: (N, H, W, Cin) -> (N, H, W, features), nnx.

    Same parameters as the linen ``ConvBNAct``: ``conv`` and ``bn``.
    """

    def __init__(self, in_features: int, features: int, *, kernel_size: int = 1,
                 dilation: int = 1, act: Activation = "relu", dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, precision: PrecisionLike = None,
                 rngs: nnx.Rngs) -> None:
        self.act = act
        self.conv = conv(in_features, features, kernel_size,
                         padding=same_padding(kernel_size, dilation), kernel_dilation=dilation,
                         use_bias=False, dtype=dtype, param_dtype=param_dtype,
                         precision=precision, rngs=rngs, conv_general_dilated=conv_general_dilated)
        self.bn = batch_norm(features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, Cin). Returns (..., H, W, features)."""
        return F.conv_norm_act(x, conv=self.conv, norm=self.bn, act=self.act)


class ASPP(nnx.Module):
    """Atrous spatial pyramid pooling (DeepLabv3, Chen et al. 2017), nnx.

    Input (..., H, W, C) -> output (..., H, W, out_channels or C). Same parameters as the linen
    module: ``b0``, ``b1``.. (one per atrous rate), ``pool``, ``project`` (conv-BN-ReLU each).
    BatchNorm mode via ``module.train()`` / ``module.eval()``.

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): none
    (ASPP computes no attention map).

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics). A new module
    is in training mode (batch statistics, running ones updated in place); ``module.eval()``
    switches to the running statistics, ``module.train()`` back.
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
        p = self.plan = ASPPPlan.create(channels, out_channels=out_channels,
                                        atrous_rates=atrous_rates)
        cba = partial(ConvBNAct, features=p.out_channels, dtype=dtype, param_dtype=param_dtype,
                      precision=precision, rngs=rngs)
        self.b0 = cba(p.channels, kernel_size=1)
        for i, r in enumerate(p.atrous_rates, start=1):
            setattr(self, f"b{i}", cba(p.channels, kernel_size=3, dilation=r))
        self.pool = cba(p.channels, kernel_size=1)
        self.project = cba(p.concat_channels, kernel_size=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, Co)."""
        p = self.plan
        check_feature_map("ASPP", "x", x, p.channels)
        branches = [getattr(self, f"b{i}") for i in range(p.num_branches)]
        return F.aspp(x, branches=branches, pool_branch=self.pool, project=self.project)
