"""Spatial transformer networks as Flax linen modules (thin wrappers over ``functional``)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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


class LocalisationNet(nn.Module):
    """STN localisation network (Jaderberg et al., NeurIPS 2015), linen.

    Input (N, H, W, C) -> (N, out_features). ``conv1`` (3x3, C -> features[0]), ``conv2``
    (3x3 -> features[1]), each followed by ReLU and a 2x2 max pool, an average pool to
    ``pool_size`` (a grid, so position survives; None = global average), flattened, ``fc1``
    (-> hidden, ReLU) and ``fc2`` (-> out_features) whose kernel starts at zero and bias at
    ``final_bias`` (the identity transform's parameters), so training starts from the identity.
    """

    channels: int
    out_features: int = 6
    features: tuple[int, int] = (8, 16)
    hidden: int = 32
    pool_size: tuple[int, int] | None = (4, 4)
    final_bias: tuple[float, ...] | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        conv = partial(nn.Conv, kernel_size=(3, 3), padding="SAME", dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision,
                       conv_general_dilated=conv_general_dilated)
        dense = partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision)
        self.conv1 = conv(self.features[0])
        self.conv2 = conv(self.features[1])
        self.fc1 = dense(self.hidden)
        self.fc2 = dense(self.out_features, kernel_init=nn.initializers.zeros,
                         bias_init=_constant_init(self.final_bias))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns (N, out_features)."""
        check_nhwc("LocalisationNet", "x", x, self.channels)
        return F.localisation_net(x, conv1=self.conv1, conv2=self.conv2, fc1=self.fc1,
                                  fc2=self.fc2, pool_size=self.pool_size)


class SpatialTransformer(nn.Module):
    """Spatial transformer (Jaderberg et al., NeurIPS 2015), linen.

    Input (N, H, W, C) -> output (N, Ho, Wo, C) (``out_size``, default (H, W)). A
    ``LocalisationNet`` ``loc`` regresses the ``transform``'s parameters (initialised to the
    identity), which give a sampling grid for ``grid_sample``. With ``return_transform=True``
    the call returns ``(output, {"params", "grid", "matrix" | "control_points"})``.
    """

    channels: int
    transform: str = "affine"
    out_size: tuple[int, int] | None = None
    mode: str = "bilinear"
    padding_mode: str = "zeros"
    align_corners: bool = False
    tps_grid_size: tuple[int, int] = (3, 3)
    features: tuple[int, int] = (8, 16)
    hidden: int = 32
    pool_size: tuple[int, int] | None = (4, 4)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        kw = {"tps_grid_size": self.tps_grid_size}
        self.loc = LocalisationNet(
            self.channels,
            out_features=F.transform_num_params(self.transform, **kw),
            features=self.features, hidden=self.hidden, pool_size=self.pool_size,
            final_bias=tuple(float(v) for v in F.identity_transform_params(self.transform, **kw)),
            dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
        )

    def __call__(
        self, x: jax.Array, *, train: bool = False, return_transform: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
        """Args: x (N, H, W, C); train: unused. Returns (N, Ho, Wo, C) (and the transform)."""
        check_nhwc("SpatialTransformer", "x", x, self.channels)
        return F.spatial_transformer(
            x, localisation=self.loc, transform=self.transform, out_size=self.out_size,
            mode=self.mode, padding_mode=self.padding_mode, align_corners=self.align_corners,
            tps_grid_size=self.tps_grid_size, return_transform=return_transform,
        )
