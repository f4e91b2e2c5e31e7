"""Channel attention as Flax nnx modules (thin wrappers over ``attention_jax.functional``)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_nhwc

__all__ = ["SqueezeExcite"]


class SqueezeExcite(nnx.Module):
    """Squeeze-and-excitation block (Hu et al., CVPR 2018), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Same parameters as the linen module: ``fc1``
    (1x1 conv C -> R) and ``fc2`` (1x1 conv R -> C).
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        add_maxpool: bool = False,
        bias: bool = True,
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        rd = F.reduced_channels("SqueezeExcite", channels, rd_ratio=rd_ratio,
                                rd_channels=rd_channels, rd_divisor=rd_divisor)
        conv = partial(nnx.Conv, kernel_size=(1, 1), use_bias=bias, dtype=dtype,
                       param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.channels = channels
        self.add_maxpool, self.act, self.gate = add_maxpool, act, gate
        self.fc1 = conv(channels, rd)
        self.fc2 = conv(rd, channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("SqueezeExcite", "x", x, self.channels)
        return F.squeeze_excite(x, reduce=self.fc1, expand=self.fc2, act=self.act,
                                gate=self.gate, add_maxpool=self.add_maxpool)
