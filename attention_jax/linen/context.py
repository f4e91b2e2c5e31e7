"""Convolutional context (ASPP) as Flax linen modules (thin wrappers over ``functional``)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_feature_map
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.linen.layers import batch_norm, conv
from attention_jax.plans import ASPPPlan, same_padding

__all__ = ["ASPP"]


class ConvBNAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> act: (N, H, W, Cin) -> (N, H, W, features).

    Parameters ``conv`` (k x k, dilation d, padding d (k - 1) / 2) and ``bn`` (PyTorch:
    ``conv.weight``, ``bn.weight``/``bias``/running statistics), BatchNorm as
    ``attention_jax.linen.layers.batch_norm``; ``act`` ReLU by default.
    """

    features: int
    kernel_size: int = 1
    dilation: int = 1
    act: Activation = "relu"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        k, d = self.kernel_size, self.dilation
        self.conv = conv(self.features, k, padding=same_padding(k, d), kernel_dilation=d,
                         use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                         precision=self.precision, conv_general_dilated=conv_general_dilated)
        self.bn = batch_norm(dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, Cin); train: BatchNorm batch statistics. Returns (..., H, W, C)."""
        return F.conv_norm_act(x, conv=self.conv,
                               norm=partial(self.bn, use_running_average=not train),
                               act=self.act)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3, Chen et al. 2017), linen.

    Input (..., H, W, C) -> output (..., H, W, out_channels or C). Parameters: ``b0`` (1x1
    conv-BN-ReLU), ``b1``.. (3x3 atrous conv-BN-ReLU, one per rate), ``pool`` (1x1 conv-BN-ReLU
    on the global average), ``project`` (1x1 conv-BN-ReLU fusing the concatenation).
    ``out_channels`` defaults to ``channels`` (shape-preserving; DeepLabv3 uses 256). The
    paper's dropout after the projection (training only) is left to the caller.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same): none
    (ASPP computes no attention map).

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics). ``train=False``
    (default) normalises with the running statistics; ``train=True`` with the batch's, updating
    the running ones: ``apply(v, x, train=True, mutable=["batch_stats"])``.
    """

    channels: int
    out_channels: int | None = None
    atrous_rates: Sequence[int] = (6, 12, 18)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = ASPPPlan.create(self.channels, out_channels=self.out_channels,
                                        atrous_rates=self.atrous_rates)
        cba = partial(ConvBNAct, p.out_channels, dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision)
        self.b0 = cba(kernel_size=1)
        for i, r in enumerate(p.atrous_rates, start=1):
            setattr(self, f"b{i}", cba(kernel_size=3, dilation=r))
        self.pool = cba(kernel_size=1)
        self.project = cba(kernel_size=1)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: BatchNorm batch statistics. Returns (..., H, W, Co)."""
        p = self.plan
        check_feature_map("ASPP", "x", x, p.channels)
        call = lambda m: partial(m, train=train)
        branches = [call(getattr(self, f"b{i}")) for i in range(p.num_branches)]
        return F.aspp(x, branches=branches, pool_branch=call(self.pool),
                      project=call(self.project))
