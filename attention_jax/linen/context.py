"""Convolutional context (ASPP) as Flax linen modules (thin wrappers over ``functional``)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Dtype, PrecisionLike
from attention_jax._validation import check_nhwc, check_positive_int, fail
from attention_jax.functional.convolution import conv_general_dilated

__all__ = ["ASPP"]


class ConvBNAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU: (N, H, W, Cin) -> (N, H, W, features).

    Parameters ``conv`` and ``bn`` (PyTorch: ``conv.weight``, ``bn.weight``/``bias``/running
    statistics). BatchNorm as PyTorch's defaults (eps 1e-5, momentum 0.1 = flax 0.9).
    """

    features: int
    kernel_size: int = 1
    dilation: int = 1
    act: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        k, d = self.kernel_size, self.dilation
        pad = d * (k - 1) // 2
        self.conv = nn.Conv(self.features, (k, k), kernel_dilation=(d, d),
                            padding=((pad, pad), (pad, pad)), use_bias=False, dtype=self.dtype,
                            param_dtype=self.param_dtype, precision=self.precision,
                            conv_general_dilated=conv_general_dilated)
        self.bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                               param_dtype=self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, Cin); train: BatchNorm batch statistics. Returns (N, H, W, C)."""
        y = self.bn(self.conv(x), use_running_average=not train)
        return nn.relu(y) if self.act else y


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3, Chen et al. 2017), linen.

    Input (N, H, W, C) -> output (N, H, W, out_channels or C). Parameters: ``b0`` (1x1
    conv-BN-ReLU), ``b1``.. (3x3 atrous conv-BN-ReLU, one per rate), ``pool`` (1x1 conv-BN-ReLU
    on the global average), ``project`` (1x1 conv-BN-ReLU fusing the concatenation).
    ``out_channels`` defaults to ``channels`` (shape-preserving; DeepLabv3 uses 256). The
    paper's dropout after the projection (training only) is left to the caller.
    """

    channels: int
    out_channels: int | None = None
    atrous_rates: Sequence[int] = (6, 12, 18)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        co = _aspp_check("ASPP", self.channels, self.out_channels, self.atrous_rates)
        cba = partial(ConvBNAct, co, dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision)
        self.b0 = cba(kernel_size=1)
        for i, r in enumerate(self.atrous_rates):
            setattr(self, f"b{i + 1}", cba(kernel_size=3, dilation=r))
        self.pool = cba(kernel_size=1)
        self.project = cba(kernel_size=1)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: BatchNorm batch statistics. Returns (N, H, W, Co)."""
        check_nhwc("ASPP", "x", x, self.channels)
        call = lambda m: partial(m, train=train)
        branches = [call(getattr(self, f"b{i}")) for i in range(len(self.atrous_rates) + 1)]
        return F.aspp(x, branches=branches,
                      pool_branch=call(self.pool), project=call(self.project))


def _aspp_check(fn: str, channels: int, out_channels: int | None, rates: Sequence[int]) -> int:
    check_positive_int(fn, "channels", channels)
    if out_channels is not None:
        check_positive_int(fn, "out_channels", out_channels)
    if not isinstance(rates, (tuple, list)) or not rates:
        raise fail(fn, "atrous_rates", "a non-empty tuple of positive integers", repr(rates))
    for r in rates:
        check_positive_int(fn, "atrous_rates", r)
    return out_channels or channels
