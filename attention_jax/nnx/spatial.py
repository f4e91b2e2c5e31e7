"""Spatial transformer networks as Flax nnx modules (thin wrappers over ``functional``)."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Dtype, PrecisionLike
from attention_jax._validation import check_feature_map
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.nnx._maps import sow_maps, wants_maps
from attention_jax.nnx.layers import conv
from attention_jax.plans import LocalisationNetPlan, SpatialTransformerPlan

__all__ = ["LocalisationNet", "SpatialTransformer"]


class LocalisationNet(nnx.Module):
    """STN localisation network (Jaderberg et al., NeurIPS 2015), nnx.

    Input (..., H, W, C) -> (N, out_features). Same parameters as the linen module: ``conv1``,
    ``conv2`` (3x3), average pool to ``pool_size`` (None = global), ``fc1``, ``fc2`` (zero
    kernel, bias ``final_bias``).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): none (it regresses
    parameters; ``SpatialTransformer`` sows them).

    Variables: ``nnx.Param`` only (no batch statistics; ``train()``/``eval()`` change nothing).
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
        p = self.plan = LocalisationNetPlan.create(
            channels, out_features=out_features, features=features, hidden=hidden,
            pool_size=pool_size, final_bias=final_bias)
        conv3x3 = partial(conv, kernel_size=3, padding=1, dtype=dtype, param_dtype=param_dtype,
                          precision=precision, rngs=rngs, conv_general_dilated=conv_general_dilated)
        dense = partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, precision=precision,
                        rngs=rngs)
        self.conv1 = conv3x3(p.channels, p.features[0])
        self.conv2 = conv3x3(p.features[0], p.features[1])
        self.fc1 = dense(p.fc1_in, p.hidden)
        self.fc2 = dense(p.hidden, p.out_features, kernel_init=nnx.initializers.zeros,
                         bias_init=p.fc2_bias_init())

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., out_features)."""
        p = self.plan
        check_feature_map("LocalisationNet", "x", x, p.channels)
        return F.localisation_net(x, conv1=self.conv1, conv2=self.conv2, fc1=self.fc1,
                                  fc2=self.fc2, pool_size=p.pool_size)


class SpatialTransformer(nnx.Module):
    """Spatial transformer (Jaderberg et al., NeurIPS 2015), nnx.

    Input (..., H, W, C) -> output (..., Ho, Wo, C). Same fields and parameters as the linen module
    (``loc``: a ``LocalisationNet`` initialised to the identity transform).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``params`` (N, P), the
    regressed transform parameters (the paper's theta: P = 6 affine, 8 perspective, 2K tps);
    ``grid`` (N, Ho, Wo, 2), the normalised (x, y) sampling grid; ``matrix`` ((N, 2, 3) affine,
    (N, 3, 3) perspective) or, for tps, ``control_points`` (N, K, 2); ``sampled``
    (N, Ho, Wo, C), the sampled image (the output).

    Variables: ``nnx.Param`` only (no batch statistics; ``train()``/``eval()`` change nothing).
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
        p = self.plan = SpatialTransformerPlan.create(
            channels, transform=transform, out_size=out_size, mode=mode,
            padding_mode=padding_mode, align_corners=align_corners, tps_grid_size=tps_grid_size,
            features=features, hidden=hidden, pool_size=pool_size)
        self.loc = LocalisationNet(
            p.channels, out_features=p.loc.out_features, features=features, hidden=hidden,
            pool_size=pool_size, final_bias=p.loc.final_bias, dtype=dtype,
            param_dtype=param_dtype, precision=precision, rngs=rngs,
        )

    def __call__(
        self, x: jax.Array, *, return_transform: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
        """Args: x (..., H, W, C). Returns (..., Ho, Wo, C) (and the transform)."""
        p = self.plan
        check_feature_map("SpatialTransformer", "x", x, p.channels)
        p.check_input(x)
        sow = wants_maps(self)
        out = F.spatial_transformer(
            x, localisation=self.loc, transform=p.transform, out_size=p.out_size,
            mode=p.mode, padding_mode=p.padding_mode, align_corners=p.align_corners,
            tps_grid_size=p.tps_grid_size, return_transform=return_transform, return_maps=sow,
        )
        if not sow:
            return out
        y, maps = out
        sow_maps(self, maps)
        return (y, {k: v for k, v in maps.items() if k != "sampled"}) if return_transform else y
