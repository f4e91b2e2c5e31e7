"""Spatial transformer networks as Flax linen modules (thin wrappers over ``functional``)."""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Dtype, PrecisionLike
from attention_jax._validation import check_feature_map
from attention_jax.functional.convolution import conv_general_dilated
from attention_jax.linen._maps import sow_maps, wants_maps
from attention_jax.linen.layers import conv
from attention_jax.plans import LocalisationNetPlan, SpatialTransformerPlan

__all__ = ["LocalisationNet", "SpatialTransformer"]


class LocalisationNet(nn.Module):
    """STN localisation network (Jaderberg et al., NeurIPS 2015), linen.

    Input (..., H, W, C) -> (N, out_features). ``conv1`` (3x3, C -> features[0]), ``conv2``
    (3x3 -> features[1]), each followed by ReLU and a 2x2 max pool, an average pool to
    ``pool_size`` (a grid, so position survives; None = global average), flattened, ``fc1``
    (-> hidden, ReLU) and ``fc2`` (-> out_features) whose kernel starts at zero and bias at
    ``final_bias`` (the identity transform's parameters), so training starts from the identity.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same): none
    (it regresses parameters; ``SpatialTransformer`` sows them).

    Variables: ``params`` only (no batch statistics; ``train`` is accepted and changes nothing).
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
        p = self.plan = LocalisationNetPlan.create(
            self.channels, out_features=self.out_features, features=self.features,
            hidden=self.hidden, pool_size=self.pool_size, final_bias=self.final_bias)
        conv3x3 = partial(conv, kernel_size=3, padding=1, dtype=self.dtype,
                          param_dtype=self.param_dtype, precision=self.precision,
                          conv_general_dilated=conv_general_dilated)
        dense = partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision)
        self.conv1 = conv3x3(p.features[0])
        self.conv2 = conv3x3(p.features[1])
        self.fc1 = dense(p.hidden)
        self.fc2 = dense(p.out_features, kernel_init=nn.initializers.zeros,
                         bias_init=p.fc2_bias_init())

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: unused. Returns (..., out_features)."""
        p = self.plan
        check_feature_map("LocalisationNet", "x", x, p.channels)
        return F.localisation_net(x, conv1=self.conv1, conv2=self.conv2, fc1=self.fc1,
                                  fc2=self.fc2, pool_size=p.pool_size)


class SpatialTransformer(nn.Module):
    """Spatial transformer (Jaderberg et al., NeurIPS 2015), linen.

    Input (..., H, W, C) -> output (..., Ho, Wo, C) (``out_size``, default (H, W)). A
    ``LocalisationNet`` ``loc`` regresses the ``transform``'s parameters (initialised to the
    identity), which give a sampling grid for ``grid_sample``. With ``return_transform=True``
    the call returns ``(output, {"params", "grid", "matrix" | "control_points"})``.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``params`` (N, P), the regressed transform parameters (the paper's theta: P = 6 affine, 8
    perspective, 2K tps); ``grid`` (N, Ho, Wo, 2), the normalised (x, y) sampling grid;
    ``matrix`` ((N, 2, 3) affine, (N, 3, 3) perspective) or, for tps, ``control_points``
    (N, K, 2); ``sampled`` (N, Ho, Wo, C), the sampled image (the output).

    Variables: ``params`` only (no batch statistics; ``train`` is accepted and changes nothing).
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
        p = self.plan = SpatialTransformerPlan.create(
            self.channels, transform=self.transform, out_size=self.out_size, mode=self.mode,
            padding_mode=self.padding_mode, align_corners=self.align_corners,
            tps_grid_size=self.tps_grid_size, features=self.features, hidden=self.hidden,
            pool_size=self.pool_size)
        self.loc = LocalisationNet(
            p.channels, out_features=p.loc.out_features, features=self.features,
            hidden=self.hidden, pool_size=self.pool_size, final_bias=p.loc.final_bias,
            dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
        )

    def __call__(
        self, x: jax.Array, *, train: bool = False, return_transform: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
        """Args: x (..., H, W, C); train: unused. Returns (..., Ho, Wo, C) (and the transform)."""
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
