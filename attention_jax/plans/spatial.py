"""Plans of the spatial transformer and its localisation network.

See ``attention_jax.plans`` for what a plan is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._validation import check_choice, check_positive_int, fail
from attention_jax.functional.sampling import MODES, PADDING_MODES
from attention_jax.plans._common import check_channels, check_int_tuple, errors_named

__all__ = ["LocalisationNetPlan", "SpatialTransformerPlan"]


def _pair(fn: str, arg: str, value: object) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise fail(fn, arg, "a pair of integers >= 1", repr(value))
    a, b = check_int_tuple(fn, arg, value)
    return a, b


@dataclass(frozen=True)
class LocalisationNetPlan:
    """STN localisation net: ``conv1`` (3x3, padding 1, C -> features[0]), ``conv2``
    (features[0] -> features[1]), ``fc1`` (``fc1_in`` -> hidden), ``fc2`` (hidden ->
    out_features, zero kernel, bias ``final_bias``).

    Fields: ``channels``, ``out_features``, ``features``, ``hidden``, ``pool_size`` ((Ph, Pw)
    or None), ``final_bias`` (``out_features`` floats, or None for zeros), ``fc1_in``
    (``features[1] * Ph * Pw``, or ``features[1]`` with ``pool_size=None``).
    """

    channels: int
    out_features: int
    features: tuple[int, int]
    hidden: int
    pool_size: tuple[int, int] | None
    final_bias: tuple[float, ...] | None
    fc1_in: int

    def fc2_bias_init(self) -> Callable[..., jax.Array]:
        """Initializer of ``fc2``'s bias: ``final_bias`` (zeros if None)."""
        values = self.final_bias

        def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
            if values is None:
                return jnp.zeros(shape, dtype)
            return jnp.asarray(values, dtype).reshape(shape)

        return init

    @classmethod
    def create(
        cls, channels: int, *, out_features: int = 6, features: Sequence[int] = (8, 16),
        hidden: int = 32, pool_size: Sequence[int] | None = (4, 4),
        final_bias: Sequence[float] | None = None, fn: str = "LocalisationNet",
    ) -> LocalisationNetPlan:
        """Validate the options (errors name ``fn``) and derive fc1's width. Returns the plan."""
        c = check_channels(fn, channels)
        out = check_channels(fn, out_features, "out_features")
        feats = _pair(fn, "features", features)
        check_positive_int(fn, "hidden", hidden)
        pool = None if pool_size is None else _pair(fn, "pool_size", pool_size)
        bias = None
        if final_bias is not None:
            bias = tuple(float(v) for v in final_bias)
            if len(bias) != out:
                raise fail(fn, "final_bias", f"None or {out} values (out_features)",
                           f"{len(bias)} values")
        cells = 1 if pool is None else pool[0] * pool[1]
        return cls(c, out, feats, int(hidden), pool, bias, feats[1] * cells)


@dataclass(frozen=True)
class SpatialTransformerPlan:
    """Spatial transformer: ``loc`` (a ``LocalisationNetPlan`` regressing the transform's
    ``num_params`` parameters, its ``fc2`` bias the identity transform), then sampling.

    Fields: ``channels``, ``transform``, ``out_size``, ``mode``, ``padding_mode``,
    ``align_corners``, ``tps_grid_size``, ``loc``.
    """

    channels: int
    transform: str
    out_size: tuple[int, int] | None
    mode: str
    padding_mode: str
    align_corners: bool
    tps_grid_size: tuple[int, ...]
    loc: LocalisationNetPlan

    def check_input(self, x: Any, fn: str = "SpatialTransformer") -> None:
        """``x`` must have pixels: the localisation net pools the map (an empty batch is fine)."""
        if 0 in tuple(x.shape[-3:-1]):
            raise fail(fn, "x", "H, W >= 1 (the localisation net pools the map)",
                       f"shape {tuple(x.shape)}")

    @classmethod
    def create(
        cls, channels: int, *, transform: str = "affine",
        out_size: Sequence[int] | None = None, mode: str = "bilinear",
        padding_mode: str = "zeros", align_corners: bool = False,
        tps_grid_size: Sequence[int] = (3, 3), features: Sequence[int] = (8, 16),
        hidden: int = 32, pool_size: Sequence[int] | None = (4, 4),
        fn: str = "SpatialTransformer",
    ) -> SpatialTransformerPlan:
        """Validate the options (errors name ``fn``). Returns the plan."""
        c = check_channels(fn, channels)
        kw = {"tps_grid_size": tps_grid_size}
        with errors_named(fn):
            num_params = F.transform_num_params(transform, **kw)
        loc = LocalisationNetPlan.create(
            c, out_features=num_params, features=features, hidden=hidden, pool_size=pool_size,
            final_bias=tuple(float(v) for v in F.identity_transform_params(transform, **kw)),
            fn=fn)
        check_choice(fn, "mode", mode, MODES)
        check_choice(fn, "padding_mode", padding_mode, PADDING_MODES)
        size = None if out_size is None else _pair(fn, "out_size", out_size)
        grid = tuple(tps_grid_size) if isinstance(tps_grid_size, (tuple, list)) else tps_grid_size
        return cls(c, transform, size, mode, padding_mode, bool(align_corners), grid, loc)
