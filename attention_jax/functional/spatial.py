"""Spatial transformer forwards (localisation -> transform -> grid -> sample), written once.

The linen and nnx ``LocalisationNet`` / ``SpatialTransformer`` modules only declare their layers
and call these functions; the layers are passed as plain ``array -> array`` callables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax._types import Layer
from attention_jax._validation import (
    check_choice,
    check_floating,
    check_min_rank,
    check_nhwc,
    check_positive_int,
    fail,
)
from attention_jax.functional._batch import NHWC, batch_dims, flatten_leading, restore_leading
from attention_jax.functional._numerics import mean
from attention_jax.functional.pooling import _max_pool_2x2, adaptive_avg_pool2d
from attention_jax.functional.sampling import (
    MODES,
    PADDING_MODES,
    _check_size,
    affine_grid,
    grid_sample,
    perspective_grid,
    tps_base_points,
    tps_grid,
)

__all__ = [
    "TRANSFORMS",
    "transform_num_params",
    "identity_transform_params",
    "transform_grid",
    "localisation_net",
    "spatial_transformer",
]


TRANSFORMS = ("affine", "similarity", "translation", "perspective", "tps")


def _check_tps_grid_size(fn: str, tps_grid_size: Sequence[int]) -> tuple[int, int]:
    if not isinstance(tps_grid_size, (tuple, list)) or len(tps_grid_size) != 2:
        raise fail(fn, "tps_grid_size", "a pair (gh, gw)", repr(tps_grid_size))
    for v in tps_grid_size:
        check_positive_int(fn, "tps_grid_size", v, minimum=2)
    return int(tps_grid_size[0]), int(tps_grid_size[1])


def transform_num_params(transform: str, *, tps_grid_size: Sequence[int] = (3, 3)) -> int:
    """Number of parameters the localisation network regresses for a transform.

    Args:
      transform: one of ``TRANSFORMS``.
      tps_grid_size: (gh, gw) control-point lattice of ``"tps"``.

    Returns:
      an int: 6 (affine), 4 (similarity: scale, angle, tx, ty), 2 (translation),
      8 (perspective: the homography with h33 = 1), 2 * gh * gw (tps).
    """
    check_choice("transform_num_params", "transform", transform, TRANSFORMS)
    if transform == "tps":
        gh, gw = _check_tps_grid_size("transform_num_params", tps_grid_size)
        return 2 * gh * gw
    return {"affine": 6, "similarity": 4, "translation": 2, "perspective": 8}[transform]


def identity_transform_params(
    transform: str, *, tps_grid_size: Sequence[int] = (3, 3)
) -> np.ndarray:
    """The parameter vector of the identity transform (the localisation net's initial bias).

    Args:
      transform: one of ``TRANSFORMS``.
      tps_grid_size: (gh, gw) control-point lattice of ``"tps"``.

    Returns:
      float32 array of shape (P,), P = ``transform_num_params(transform, ...)``.
    """
    check_choice("identity_transform_params", "transform", transform, TRANSFORMS)
    if transform == "tps":
        gh, gw = _check_tps_grid_size("identity_transform_params", tps_grid_size)
        return tps_base_points((gh, gw)).reshape(-1)
    table = {
        "affine": [1, 0, 0, 0, 1, 0],
        "similarity": [1, 0, 0, 0],
        "translation": [0, 0],
        "perspective": [1, 0, 0, 0, 1, 0, 0, 0],
    }
    return np.asarray(table[transform], np.float32)


def transform_grid(
    params: jax.Array,
    size: Sequence[int],
    *,
    transform: str = "affine",
    tps_grid_size: Sequence[int] = (3, 3),
    align_corners: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Transform parameters -> sampling grid (computed in float32 whatever ``params``' dtype).

    Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015 (sec. 3.2).

    Args:
      params: (N, P) regressed parameters (N: any leading batch dims, none included; see
        ``transform_num_params``): affine: the row-major
        2x3 matrix; similarity: (scale, angle in radians, tx, ty); translation: (tx, ty);
        perspective: the first 8 entries of the row-major 3x3 homography (h33 = 1); tps: the
        (x, y) input positions of the ``tps_base_points(tps_grid_size)`` control points.
      size: output size (N, Ho, Wo, C), with params' leading dims first.
      transform: one of ``TRANSFORMS``.
      tps_grid_size: (gh, gw) control-point lattice of ``"tps"``.
      align_corners: as in ``affine_grid``.

    Returns:
      grid (N, Ho, Wo, 2) and a dict with ``"matrix"`` ((N, 2, 3) or, for perspective, (N, 3, 3))
      or, for tps, ``"control_points"`` (N, K, 2).
    """
    fn = "transform_grid"
    check_choice(fn, "transform", transform, TRANSFORMS)
    if transform == "tps":
        _check_tps_grid_size(fn, tps_grid_size)
    p_count = transform_num_params(transform, tps_grid_size=tps_grid_size)
    check_min_rank(fn, "params", params, 1, "(..., P)")
    check_floating(fn, "params", params)
    if params.shape[-1] != p_count:
        raise fail(fn, "params", f"shape (..., {p_count}) for transform={transform!r}",
                   f"shape {tuple(params.shape)}")
    lead = tuple(params.shape[:-1])
    _check_size(fn, size, lead, "params")
    size = (math.prod(lead), *(int(v) for v in size[-3:]))
    grid, aux = _transform_grid(flatten_leading(params, 1), size, transform, tps_grid_size,
                                align_corners)
    return restore_leading((grid, aux), lead)


def _transform_grid(params, size, transform, tps_grid_size, align_corners):
    p = params.astype(jnp.promote_types(params.dtype, jnp.float32))
    n = p.shape[0]
    if transform == "tps":
        cp = p.reshape(n, p.shape[1] // 2, 2)
        grid = tps_grid(cp, size, base_points=tps_base_points(tuple(tps_grid_size)),
                        align_corners=align_corners)
        return grid, {"control_points": cp}
    if transform == "perspective":
        m = jnp.concatenate([p, jnp.ones((n, 1), p.dtype)], axis=1).reshape(n, 3, 3)
        return perspective_grid(m, size, align_corners=align_corners), {"matrix": m}
    if transform == "affine":
        theta = p.reshape(n, 2, 3)
    elif transform == "similarity":
        s, a, tx, ty = (p[:, i] for i in range(4))
        c, si = s * jnp.cos(a), s * jnp.sin(a)
        theta = jnp.stack([c, -si, tx, si, c, ty], axis=1).reshape(n, 2, 3)
    else:
        one, zero = jnp.ones((n,), p.dtype), jnp.zeros((n,), p.dtype)
        theta = jnp.stack([one, zero, p[:, 0], zero, one, p[:, 1]], axis=1).reshape(n, 2, 3)
    return affine_grid(theta, size, align_corners=align_corners), {"matrix": theta}


@batch_dims(x=NHWC)
def localisation_net(
    x: jax.Array,
    *,
    conv1: Layer,
    conv2: Layer,
    fc1: Layer,
    fc2: Layer,
    pool_size: Sequence[int] | None = (4, 4),
) -> jax.Array:
    """The STN localisation network: conv-relu-pool twice, pool to a grid, dense-relu-dense.

    Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015 (sec. 3.1). The paper's nets
    flatten the last feature map, which ties them to one input size; here it is first average-
    pooled to ``pool_size`` (PyTorch's adaptive bins), which keeps *where* things are (a global
    average would not, and a localisation net that cannot see position cannot learn
    translations) and works for any input size. ``pool_size=None`` is the global average.

    Args:
      x: (N, H, W, C) feature map.
      conv1: layer (N, H, W, C) -> (N, H, W, F1) (3x3, same padding).
      conv2: layer (N, ~H/2, ~W/2, F1) -> (N, ~H/2, ~W/2, F2).
      fc1: layer (N, Ph * Pw * F2) -> (N, D) ((N, F2) -> (N, D) with ``pool_size=None``); its
        input is the pooled map flattened in (Ph, Pw, F2) order.
      fc2: layer (N, D) -> (N, P), initialised to the identity transform.
      pool_size: (Ph, Pw) or None.

    Returns:
      (N, P) transform parameters.
    """
    fn = "localisation_net"
    check_nhwc(fn, "x", x)
    if pool_size is not None and (len(tuple(pool_size)) != 2 or min(pool_size) < 1):
        raise fail(fn, "pool_size", "None or a pair of positive ints", repr(pool_size))
    h = _max_pool_2x2(jax.nn.relu(conv1(x)), ceil_mode=True)
    h = _max_pool_2x2(jax.nn.relu(conv2(h)), ceil_mode=True)
    if pool_size is None:
        h = mean(h, (1, 2))
    else:
        h = adaptive_avg_pool2d(h, tuple(pool_size))
        h = h.reshape(h.shape[0], math.prod(h.shape[1:]))  # -1 fails for N = 0
    return fc2(jax.nn.relu(fc1(h)))


@batch_dims(x=NHWC)
def spatial_transformer(
    x: jax.Array,
    *,
    localisation: Layer,
    transform: str = "affine",
    out_size: Sequence[int] | None = None,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
    tps_grid_size: Sequence[int] = (3, 3),
    return_transform: bool = False,
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
    """Spatial transformer: localisation -> transform parameters -> grid -> sample.

    Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015.

    Args:
      x: (N, H, W, C) feature map.
      localisation: callable (N, H, W, C) -> (N, P) regressing the transform parameters.
      transform: one of ``TRANSFORMS`` (see ``transform_grid`` for the parameterisations).
      out_size: (Ho, Wo) of the output; None keeps (H, W).
      mode: ``grid_sample`` interpolation.
      padding_mode: ``grid_sample`` padding.
      align_corners: as in ``affine_grid`` / ``grid_sample``.
      tps_grid_size: (gh, gw) control-point lattice of ``"tps"``.
      return_transform: also return the transform.
      return_maps: also return the transform and the sampled image (see Returns).

    Returns:
      (N, Ho, Wo, C) in ``x``'s dtype; with ``return_transform`` a pair (output, dict with
      ``"params"`` (N, P), the regressed parameters (the paper's theta), ``"grid"``
      (N, Ho, Wo, 2), the sampling grid, and ``"matrix"`` ((N, 2, 3), or (N, 3, 3) for
      perspective) or, for tps, ``"control_points"`` (N, K, 2)); with ``return_maps`` the
      same pair whose dict also holds ``"sampled"`` (N, Ho, Wo, C), the output.
    """
    fn = "spatial_transformer"
    check_nhwc(fn, "x", x)
    check_choice(fn, "transform", transform, TRANSFORMS)
    check_choice(fn, "mode", mode, MODES)
    check_choice(fn, "padding_mode", padding_mode, PADDING_MODES)
    n, h, w, c = x.shape
    if out_size is None:
        ho, wo = h, w
    else:
        if not isinstance(out_size, (tuple, list)) or len(out_size) != 2:
            raise fail(fn, "out_size", "None or a pair (Ho, Wo)", repr(out_size))
        for v in out_size:
            check_positive_int(fn, "out_size", v)
        ho, wo = int(out_size[0]), int(out_size[1])
    params = localisation(x)
    grid, aux = transform_grid(params, (n, ho, wo, c), transform=transform,
                               tps_grid_size=tps_grid_size, align_corners=align_corners)
    y = grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    if return_transform or return_maps:
        maps = {"params": params, "grid": grid, **aux}
        return y, ({**maps, "sampled": y} if return_maps else maps)
    return y
