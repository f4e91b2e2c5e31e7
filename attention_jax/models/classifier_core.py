"""Forwards of the spatial-transformer experiment's classifiers, written once for linen and nnx.

FCN, CNN and the localisation networks of ST-FCN / ST-CNN (Jaderberg et al., "Spatial
Transformer Networks", NeurIPS 2015, Sec. 4.1) take their learned layers as plain
``array -> array`` callables, as the mechanisms in ``attention_jax.functional`` do: the linen
(``models.cnn``) and nnx (``models.cnn_nnx``) modules only declare the layers and call these.
Parameter names are those of the keyword arguments, so both APIs share one parameter tree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from attention_jax import functional as F

Layer = Callable[[jax.Array], jax.Array]

LOCALISATION = "loc"
"""Name of the localisation network's subtree in every spatial-transformer classifier."""


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2, odd edges dropped (as ``flax.linen.max_pool`` and PyTorch).

    A max over a reshaped (N, H/2, 2, W/2, 2, C) view, not ``lax.reduce_window``: on XLA:CPU
    the window reduction's gradient (select-and-scatter) made a small CNN's training step ~3.5x
    slower (measured on this project's 2-core machine). Ties share the gradient (a
    reduction's rule) where PyTorch gives it to one element; after a ReLU, ties are zeros,
    whose gradient the ReLU stops anyway.
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def flatten(x: jax.Array) -> jax.Array:
    """(N, ...) -> (N, prod(...))."""
    return x.reshape(x.shape[0], -1)


def fcn_forward(x: jax.Array, *, fc1: Layer, fc2: Layer, head: Layer) -> jax.Array:
    """Fully connected classifier: flatten, two ReLU hidden layers, the output layer.

    Args:
      x: images (N, H, W, C).
      fc1: (N, H * W * C) -> (N, D1).
      fc2: (N, D1) -> (N, D2).
      head: (N, D2) -> (N, num_classes).

    Returns:
      logits (N, num_classes).
    """
    h = jax.nn.relu(fc1(flatten(x)))
    return head(jax.nn.relu(fc2(h)))


def cnn_forward(x: jax.Array, *, conv1: Layer, conv2: Layer, fc: Layer, head: Layer) -> jax.Array:
    """Convolutional classifier: (conv, ReLU, 2x2 max pool) twice, flatten, ReLU dense, output.

    Args:
      x: images (N, H, W, C).
      conv1: (N, H, W, C) -> (N, H, W, F1) (same padding).
      conv2: (N, H/2, W/2, F1) -> (N, H/2, W/2, F2).
      fc: (N, (H/4) * (W/4) * F2) -> (N, D) (the map flattened in (H, W, F) order).
      head: (N, D) -> (N, num_classes).

    Returns:
      logits (N, num_classes).
    """
    h = max_pool2(jax.nn.relu(conv1(x)))
    h = max_pool2(jax.nn.relu(conv2(h)))
    return head(jax.nn.relu(fc(flatten(h))))


def conv_localisation(
    x: jax.Array, *, conv1: Layer, conv2: Layer, fc1: Layer, fc2: Layer
) -> jax.Array:
    """The ST-CNN's localisation net: pool, (conv, ReLU, pool), conv, ReLU, flatten, dense twice.

    The input is max-pooled 2x2 first (a digit's pose needs no full resolution), and the last
    map is flattened, not averaged: a localisation net that cannot see *where* the digit is
    cannot learn to move it.

    Args:
      x: images (N, H, W, C).
      conv1: (N, H/2, W/2, C) -> (N, H/2, W/2, F1) (same padding).
      conv2: (N, H/4, W/4, F1) -> (N, H/4, W/4, F2).
      fc1: (N, (H/4) * (W/4) * F2) -> (N, D).
      fc2: (N, D) -> (N, P) transform parameters, initialised to the identity transform.

    Returns:
      (N, P) transform parameters.
    """
    h = max_pool2(jax.nn.relu(conv1(max_pool2(x))))
    h = jax.nn.relu(conv2(h))
    return fc2(jax.nn.relu(fc1(flatten(h))))


def fc_localisation(x: jax.Array, *, fc1: Layer, fc2: Layer) -> jax.Array:
    """The ST-FCN's localisation net: flatten, one ReLU hidden layer, the parameter layer.

    Args:
      x: images (N, H, W, C).
      fc1: (N, H * W * C) -> (N, D).
      fc2: (N, D) -> (N, P), initialised to the identity transform.

    Returns:
      (N, P) transform parameters.
    """
    return fc2(jax.nn.relu(fc1(flatten(x))))


def rectify(
    x: jax.Array,
    *,
    localisation: Layer,
    transform: str,
    out_size: Sequence[int] | None,
    tps_grid_size: Sequence[int],
    return_transform: bool = False,
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
    """The spatial transformer of an ST classifier: what its classifier sees.

    Args:
      x: images (N, H, W, C).
      localisation: (N, H, W, C) -> (N, P) transform parameters.
      transform: ``"affine"``, ``"perspective"``, ``"tps"`` (any of ``F.TRANSFORMS``).
      out_size: (Ho, Wo) of the output, or None for (H, W).
      tps_grid_size: control-point lattice of ``"tps"``.
      return_transform: also return the transform (see ``F.spatial_transformer``).
      return_maps: also return the transform and the sampled image (``F.spatial_transformer``'s
        maps: ``"params"``, ``"grid"``, ``"matrix"`` or ``"control_points"``, ``"sampled"``).

    Returns:
      (N, Ho, Wo, C) (and the transform dict, or the maps).
    """
    return F.spatial_transformer(x, localisation=localisation, transform=transform,
                                 out_size=out_size, tps_grid_size=tps_grid_size,
                                 return_transform=return_transform, return_maps=return_maps)


def st_forward(x: jax.Array, *, classifier: Layer, return_maps: bool = False,
               **rectify_options: Any) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
    """ST classifier: the spatial transformer's output, classified.

    Args:
      x: images (N, H, W, C).
      classifier: (N, Ho, Wo, C) -> (N, num_classes).
      return_maps: also return the spatial transformer's maps (see ``rectify``).
      **rectify_options: keyword arguments of ``rectify`` (localisation, transform, ...).

    Returns:
      logits (N, num_classes); with ``return_maps`` a pair (logits, maps).
    """
    if not return_maps:
        return classifier(rectify(x, **rectify_options))
    y, maps = rectify(x, return_maps=True, **rectify_options)
    return classifier(y), maps


def identity_bias(transform: str, tps_grid_size: Sequence[int]) -> tuple[float, ...]:
    """The localisation net's last bias: the identity transform's parameters."""
    values = F.identity_transform_params(transform, tps_grid_size=tuple(tps_grid_size))
    return tuple(float(v) for v in values)


def localisation_labels(params: Any) -> Any:
    """Label each parameter ``"localisation"`` (under ``loc``) or ``"classifier"``.

    For ``optax.multi_transform``, to give the localisation net its own learning rate. Works on
    linen parameter dicts and nnx states alike (it reads the key path).

    Args:
      params: a parameter pytree of an ST classifier (or any model; nothing under ``loc``
        gives all ``"classifier"``).

    Returns:
      A pytree of the same structure whose leaves are the two label strings.
    """
    def label(path, _):
        names = {getattr(k, "key", getattr(k, "name", None)) for k in path}
        return "localisation" if LOCALISATION in names else "classifier"

    return jax.tree_util.tree_map_with_path(label, params)
