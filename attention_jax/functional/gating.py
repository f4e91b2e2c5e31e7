"""Gates, activations, rescaling and the reduction-width rules shared by the attention family."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax._validation import (
    check_array,
    check_callable_or_name,
    check_number,
    check_positive_int,
    fail,
)
from attention_jax.functional._numerics import acc_dtype

__all__ = [
    "GATES",
    "ACTIVATIONS",
    "get_gate",
    "get_act",
    "gate",
    "rescale",
    "branch_softmax",
    "eca_kernel_size",
    "make_divisible",
    "reduced_channels",
]


def _hard_sigmoid(x: jax.Array) -> jax.Array:
    # PyTorch's F.hardsigmoid: relu6(x + 3) / 6. (jnp first: NumPy would promote bf16 + 3.0.)
    return jnp.clip(jnp.asarray(x) + 3.0, 0.0, 6.0) / 6.0


def _hard_swish(x: jax.Array) -> jax.Array:
    return x * _hard_sigmoid(x)


def _identity(x: jax.Array) -> jax.Array:
    return x


GATES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "tanh": jnp.tanh,
    "identity": _identity,
}
"""Gate functions by name: they map logits to attention weights."""

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "hard_swish": _hard_swish,
    "leaky_relu": jax.nn.leaky_relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "identity": _identity,
}
"""Hidden activations by name (``gelu`` is the exact erf form, as PyTorch's default)."""


def get_gate(gate: str | Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """Resolve a gate given by name (see ``GATES``) or pass a callable through.

    Args:
      gate: a name in ``GATES`` or a callable mapping an array to an array of the same shape.

    Returns:
      The gate (a callable).
    """
    return check_callable_or_name("get_gate", "gate", gate, GATES)


def get_act(act: str | Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """Resolve an activation given by name (see ``ACTIVATIONS``) or pass a callable through.

    Args:
      act: a name in ``ACTIVATIONS`` or a callable.

    Returns:
      The activation (a callable).
    """
    return check_callable_or_name("get_act", "act", act, ACTIVATIONS)


def gate(logits: jax.Array, *, kind: str | Callable[[jax.Array], jax.Array] = "sigmoid"):
    """Apply a gate by name to logits of any shape.

    Args:
      logits: array of any shape.
      kind: gate name in ``GATES`` or a callable.

    Returns:
      Array of the same shape and dtype as ``logits``.
    """
    check_array("gate", "logits", logits)
    return check_callable_or_name("gate", "kind", kind, GATES)(logits)


def rescale(x: jax.Array, weights: jax.Array) -> jax.Array:
    """Multiply a feature map by attention weights that broadcast against it.

    Args:
      x: (N, H, W, C) (or any shape) feature map.
      weights: gate values broadcastable to ``x``: (N, 1, 1, C) for channel attention,
        (N, H, W, 1) for spatial attention.

    Returns:
      ``x * weights`` with the shape and dtype of ``x``.
    """
    check_array("rescale", "x", x)
    check_array("rescale", "weights", weights)
    try:
        out_shape = jnp.broadcast_shapes(x.shape, weights.shape)
    except ValueError:
        out_shape = None
    if out_shape != tuple(x.shape):
        raise fail("rescale", "weights", f"broadcastable to x's shape {tuple(x.shape)}",
                   f"shape {tuple(weights.shape)}")
    return x * weights.astype(x.dtype)


def branch_softmax(logits: jax.Array, *, axis: int = 1) -> jax.Array:
    """Softmax across branches (SK-Net, ResNeSt), computed in float32 and cast back.

    Args:
      logits: array whose ``axis`` indexes branches, e.g. (N, M, C) for M branches.
      axis: the branch axis.

    Returns:
      Weights of the same shape and dtype as ``logits``, summing to one along ``axis``.
    """
    check_array("branch_softmax", "logits", logits)
    if (isinstance(axis, bool) or not isinstance(axis, (int, np.integer))
            or not -logits.ndim <= axis < logits.ndim):
        raise fail("branch_softmax", "axis", f"in [-{logits.ndim}, {logits.ndim})", axis)
    return jax.nn.softmax(logits.astype(acc_dtype(logits)), axis=axis).astype(logits.dtype)


def eca_kernel_size(channels: int, *, gamma: float = 2.0, beta: float = 1.0) -> int:
    """ECA-Net's adaptive kernel size: the odd number nearest above |(log2(C) + b) / gamma|.

    Wang et al., "ECA-Net: Efficient Channel Attention", CVPR 2020, Eq. 12 (official code:
    ``t = int(abs((log2(C) + b) / gamma)); k = t if t % 2 else t + 1``).

    Args:
      channels: number of channels C >= 1.
      gamma, beta: the paper's mapping constants (gamma > 0, both finite).

    Returns:
      Odd kernel size >= 1 (an int).
    """
    check_positive_int("eca_kernel_size", "channels", channels)
    gamma = check_number("eca_kernel_size", "gamma", gamma, positive=True)
    beta = check_number("eca_kernel_size", "beta", beta)
    t = abs((math.log2(channels) + beta) / gamma)
    if not math.isfinite(t):
        raise fail("eca_kernel_size", "gamma", "large enough that (log2(channels) + beta) / "
                   "gamma is finite", repr(gamma))
    t = int(t)
    return t if t % 2 else t + 1


def make_divisible(
    value: float, *, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9
) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%.

    The rule timm and the MobileNet family use.

    Args:
      value: the unrounded width (a finite number).
      divisor: the multiple to round to.
      min_value: smallest result (default ``divisor``), an integer >= 1.
      round_limit: if rounding loses more than ``1 - round_limit`` of ``value``, go one up.

    Returns:
      The rounded width (an int >= 1).
    """
    value = check_number("make_divisible", "value", value)
    check_positive_int("make_divisible", "divisor", divisor)
    if min_value is not None:
        check_positive_int("make_divisible", "min_value", min_value)
    round_limit = check_number("make_divisible", "round_limit", round_limit)
    min_value = min_value or divisor
    new_v = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_v < round_limit * value:
        new_v += divisor
    return new_v


def reduced_channels(
    fn: str,
    channels: int,
    *,
    rd_ratio: float,
    rd_channels: int | None,
    rd_divisor: int,
) -> int:
    """The bottleneck width with the one rule the whole family shares.

    ``rd_channels`` wins when given; else ``make_divisible(channels * rd_ratio, rd_divisor)``
    (``rd_divisor=1`` keeps the plain ``int(channels * rd_ratio)``, floored at 1).

    Args:
      fn: name of the caller, for error messages.
      channels: input channels.
      rd_ratio: reduction ratio (e.g. 1/16).
      rd_channels: explicit bottleneck width, or None.
      rd_divisor: rounding multiple.

    Returns:
      The bottleneck width (an int >= 1).
    """
    check_positive_int(fn, "channels", channels)
    if rd_channels is not None:
        check_positive_int(fn, "rd_channels", rd_channels)
        return int(rd_channels)
    if (isinstance(rd_ratio, bool) or not isinstance(rd_ratio, (int, float, np.floating))
            or not math.isfinite(rd_ratio) or rd_ratio <= 0):
        raise fail(fn, "rd_ratio", "a positive finite number", repr(rd_ratio))
    if not math.isfinite(channels * rd_ratio):
        raise fail(fn, "rd_ratio", f"small enough that channels * rd_ratio is finite "
                   f"(channels={channels})", repr(rd_ratio))
    check_positive_int(fn, "rd_divisor", rd_divisor)
    if rd_divisor == 1:
        width = int(channels * rd_ratio)
        if width < 1:
            raise fail(fn, "rd_ratio", f"large enough that channels * rd_ratio >= 1 "
                       f"(channels={channels})", repr(rd_ratio))
        return width
    return make_divisible(channels * rd_ratio, divisor=rd_divisor, round_limit=0.0)
