"""Spatial transformer networks as Flax nnx modules (thin wrappers over ``functional``)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Dtype, PrecisionLike
from attention_jax._validation import check_nhwc
from attention_jax.functional.convolution import conv_general_dilated

__all__ = ["LocalisationNet", "SpatialTransformer"]


def _constant_init(values: Sequence[float] | None):
    def init(key, shape, dtype=jnp.float32):
        if values is None:
            return jnp.zeros(shape, dtype)
        return jnp.asarray(values, dtype).reshape(shape)

    return init


class LocalisationNet(nnx.Module):
    """STN localisation network (Jaderberg et al., NeurIPS 2015), nnx.

    Input (N, H, W, C) -> (N, out_features). Same parameters as the linen module: ``conv1``,
    ``conv2`` (3x3), average pool to ``pool_size`` (None = global), ``fc1``, ``fc2`` (zero
    kernel, bias ``final_bias``).
    """

    def __init__(
        self,
        channels: int,
        *,
        out_features: int = 6,
        features: tuple[int, int] = (8, 16),
        hidden: int = 32,
        pool_size: tuple[int, int] | None = (4, 4),
        final_bias: tuple[float, ...] | None = None,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        conv = partial(nnx.Conv, kernel_size=(3, 3), padding="SAME", dtype=dtype,
                       param_dtype=param_dtype, precision=precision, rngs=rngs,
                       conv_general_dilated=conv_general_dilated)
        dense = partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, precision=precision,
                        rngs=rngs)
        self.channels = channels
        self.pool_size = pool_size
        self.conv1 = conv(channels, features[0])
        self.conv2 = conv(features[0], features[1])
        cells = 1 if pool_size is None else pool_size[0] * pool_size[1]
        self.fc1 = dense(features[1] * cells, hidden)
        self.fc2 = dense(hidden, out_features, kernel_init=nnx.initializers.zeros,
                         bias_init=_constant_init(final_bias))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, out_features)."""
        check_nhwc("LocalisationNet", "x", x, self.channels)
        return F.localisation_net(x, conv1=self.conv1, conv2=self.conv2, fc1=self.fc1,
                                  fc2=self.fc2, pool_size=self.pool_size)


class SpatialTransformer(nnx.Module):
    """Spatial transformer (Jaderberg et al., NeurIPS 2015), nnx.

    Input (N, H, W, C) -> output (N, Ho, Wo, C). Same fields and parameters as the linen module
    (``loc``: a ``LocalisationNet`` initialised to the identity transform).
    """

    def __init__(
        self,
        channels: int,
        *,
        transform: str = "affine",
        out_size: tuple[int, int] | None = None,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        align_corners: bool = False,
        tps_grid_size: tuple[int, int] = (3, 3),
        features: tuple[int, int] = (8, 16),
        hidden: int = 32,
        pool_size: tuple[int, int] | None = (4, 4),
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        kw = {"tps_grid_size": tps_grid_size}
        self.channels = channels
        self.transform, self.out_size, self.mode = transform, out_size, mode
        self.padding_mode, self.align_corners = padding_mode, align_corners
        self.tps_grid_size = tps_grid_size
        self.loc = LocalisationNet(
            channels, out_features=F.transform_num_params(transform, **kw),
            features=features, hidden=hidden, pool_size=pool_size,
            final_bias=tuple(float(v) for v in F.identity_transform_params(transform, **kw)),
            dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs,
        )

    def __call__(
        self, x: jax.Array, *, return_transform: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
        """Args: x (N, H, W, C). Returns (N, Ho, Wo, C) (and the transform)."""
        check_nhwc("SpatialTransformer", "x", x, self.channels)
        return F.spatial_transformer(
            x, localisation=self.loc, transform=self.transform, out_size=self.out_size,
            mode=self.mode, padding_mode=self.padding_mode, align_corners=self.align_corners,
            tps_grid_size=self.tps_grid_size, return_transform=return_transform,
        )
