"""Numerical policy: reductions accumulate in at least float32, then cast back."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def acc_dtype(x: jax.Array) -> jnp.dtype:
    """float32 for low-precision input, the input's own dtype for float32/float64."""
    return jnp.promote_types(x.dtype, jnp.float32)


def mean(x: jax.Array, axis, *, keepdims: bool = False) -> jax.Array:
    """Mean accumulated in ``acc_dtype(x)``, returned in ``x.dtype``; 0 over an empty axis."""
    if _empty(x, axis):
        return jnp.zeros_like(jnp.sum(x, axis=axis, keepdims=keepdims))
    return jnp.mean(x, axis=axis, keepdims=keepdims, dtype=acc_dtype(x)).astype(x.dtype)


def amax(x: jax.Array, axis, *, keepdims: bool = False) -> jax.Array:
    """Maximum over ``axis``; 0 over an empty axis (where ``jnp.max`` has no identity)."""
    if _empty(x, axis):
        return jnp.zeros_like(jnp.sum(x, axis=axis, keepdims=keepdims))
    return jnp.max(x, axis=axis, keepdims=keepdims)


def _empty(x: jax.Array, axis) -> bool:
    """Whether the reduction over ``axis`` (an int or a tuple) has no elements (a static test).

    A window with nothing in it pools to 0, as an attention row with no key gives a zero output:
    an empty feature map then goes through every mechanism to an empty output, not NaN.
    """
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return any(x.shape[a] == 0 for a in axes)
