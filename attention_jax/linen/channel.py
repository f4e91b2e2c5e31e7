"""Channel attention as Flax linen modules (thin wrappers over ``attention_jax.functional``)."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_nhwc

__all__ = ["SqueezeExcite"]


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation block (Hu et al., CVPR 2018), linen.

    Input (N, H, W, C) -> output (N, H, W, C). Parameters: ``fc1`` (1x1 conv C -> R) and ``fc2``
    (1x1 conv R -> C), R from ``rd_ratio``/``rd_channels``/``rd_divisor``.
    """

    channels: int
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    add_maxpool: bool = False
    bias: bool = True
    act: Activation = "relu"
    gate: Activation = "sigmoid"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        rd = F.reduced_channels(
            "SqueezeExcite", self.channels, rd_ratio=self.rd_ratio,
            rd_channels=self.rd_channels, rd_divisor=self.rd_divisor,
        )
        conv = partial(nn.Conv, kernel_size=(1, 1), use_bias=self.bias, dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision)
        self.fc1 = conv(rd)
        self.fc2 = conv(self.channels)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused (no batch statistics). Returns (N, H, W, C)."""
        check_nhwc("SqueezeExcite", "x", x, self.channels)
        return F.squeeze_excite(x, reduce=self.fc1, expand=self.fc2, act=self.act,
                                gate=self.gate, add_maxpool=self.add_maxpool)
