"""Trace-time argument checks shared by every public function and module.

Each check raises ``ValueError("<function>: <argument> must be <expected>, got <received>")``.
They read only static information (shapes, dtypes, Python options), so under ``jit`` they run
once while tracing and cost nothing per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np


def fail(fn: str, arg: str, expected: str, got: Any) -> ValueError:
    """Build the one error type and message shape used across the library."""
    return ValueError(f"{fn}: {arg} must be {expected}, got {got}")


def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x))


def check_array(fn: str, arg: str, x: Any) -> None:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise fail(fn, arg, "an array", type(x).__name__)


def check_rank(fn: str, arg: str, x: Any, rank: int | Sequence[int], layout: str = "") -> None:
    """``x.ndim`` must equal ``rank`` (or be one of ``rank``)."""
    check_array(fn, arg, x)
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if x.ndim not in ranks:
        what = f"rank {' or '.join(map(str, ranks))}"
        if layout:
            what += f" {layout}"
        raise fail(fn, arg, what, f"shape {shape_of(x)}")


def check_min_rank(fn: str, arg: str, x: Any, rank: int, layout: str = "") -> None:
    check_array(fn, arg, x)
    if x.ndim < rank:
        what = f"at least rank {rank}" + (f" {layout}" if layout else "")
        raise fail(fn, arg, what, f"shape {shape_of(x)}")


def check_nhwc(fn: str, arg: str, x: Any, channels: int | None = None) -> None:
    """A floating NHWC feature map of rank exactly 4, optionally with a given channel count.

    For code that needs one batch axis (the models, the data transforms). The attention
    functions and modules take any number of leading batch dimensions: ``check_feature_map``.
    """
    check_rank(fn, arg, x, 4, "(N, H, W, C)")
    check_floating(fn, arg, x)
    check_channels_last(fn, arg, x, channels)


def check_feature_map(
    fn: str, arg: str, x: Any, channels: int | None = None, layout: str = "(..., H, W, C)"
) -> None:
    """A floating channels-last map with any number of leading batch dims (rank >= 3).

    ``(H, W, C)``, ``(N, H, W, C)``, ``(N1, N2, H, W, C)``, ... as ``flax.linen.Conv`` takes
    them; optionally with a given channel count. ``layout`` names the axes in the message (its
    entries other than ``...`` give the minimum rank; a number is an axis of that fixed size,
    e.g. ``"(..., Ho, Wo, 2)"``).
    """
    axes = layout_axes(layout)
    check_min_rank(fn, arg, x, len(axes), layout)
    check_floating(fn, arg, x)
    tail = x.shape[x.ndim - len(axes):]
    if any(a.isdigit() and t != int(a) for t, a in zip(tail, axes, strict=True)):
        raise fail(fn, arg, f"shape {layout}", f"shape {shape_of(x)}")
    check_channels_last(fn, arg, x, channels)


def layout_axes(layout: str) -> tuple[str, ...]:
    """The named axes of a layout string: ``"(..., Ho, Wo, 2)"`` -> ``("Ho", "Wo", "2")``.

    A number names an axis of that fixed size.
    """
    return tuple(a.strip() for a in layout.strip("()").split(",")
                 if a.strip() not in ("", "..."))


def layout_rank(layout: str) -> int:
    """Number of named axes in a layout string: ``"(..., H, W, C)"`` -> 3."""
    return len(layout_axes(layout))


def check_channels_last(fn: str, arg: str, x: Any, channels: int | None) -> None:
    if channels is not None and x.shape[-1] != channels:
        raise fail(fn, arg, f"{channels} channels (last axis, NHWC)", f"shape {shape_of(x)}")


def check_floating(fn: str, arg: str, x: Any) -> None:
    check_array(fn, arg, x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise fail(fn, arg, "a floating-point array", f"dtype {x.dtype}")


def check_choice(fn: str, arg: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise fail(fn, arg, f"one of {', '.join(repr(c) for c in choices)}", repr(value))


def check_positive_int(fn: str, arg: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise fail(fn, arg, f"an integer >= {minimum}", repr(value))


def check_number(fn: str, arg: str, value: Any, *, positive: bool = False) -> float:
    """A finite real number (not a bool), ``> 0`` with ``positive``; returns it as a float."""
    ok = (not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.number))
          and np.isreal(value) and bool(np.isfinite(value)) and (not positive or value > 0))
    if not ok:
        raise fail(fn, arg, "a positive finite number" if positive else "a finite number",
                   repr(value))
    return float(value)


def check_bool(fn: str, arg: str, value: Any) -> None:
    """``value`` is a Python or NumPy bool (a switch, not a truthy number or string)."""
    if not isinstance(value, (bool, np.bool_)):
        raise fail(fn, arg, "True or False", repr(value))


def check_odd(fn: str, arg: str, value: Any) -> None:
    check_positive_int(fn, arg, value)
    if value % 2 == 0:
        raise fail(fn, arg, "an odd positive integer", repr(value))


def check_power_of_two(fn: str, arg: str, value: Any, *, zero: str | None = None) -> None:
    """A power of two >= 2; with ``zero`` (what 0 means, e.g. ``"global"``) 0 is allowed too."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, np.integer))
          and ((zero is not None and value == 0) or (value >= 2 and not value & (value - 1))))
    if not ok:
        expected = "a power of two >= 2"
        raise fail(fn, arg, f"0 ({zero}) or {expected}" if zero else expected, repr(value))


def check_divides(fn: str, arg: str, value: int, divisor_arg: str, divisor: int) -> None:
    if divisor <= 0 or value % divisor != 0:
        raise fail(fn, arg, f"divisible by {divisor_arg}={divisor}", repr(value))


def check_same(fn: str, arg: str, value: Any, expected: Any, what: str) -> None:
    if value != expected:
        raise fail(fn, arg, f"{what} {expected!r}", repr(value))


def check_layer_shape(fn: str, arg: str, y: Any, expected: Sequence[int]) -> None:
    """A layer passed as ``arg`` returned ``y``, which must have shape ``expected``."""
    if shape_of(y) != tuple(expected):
        raise fail(fn, arg, f"a layer returning shape {tuple(expected)}", f"shape {shape_of(y)}")


def check_callable_or_name(
    fn: str, arg: str, value: Any, table: dict[str, Callable[..., Any]]
) -> Callable[..., Any]:
    """Resolve a name from ``table`` or accept a callable as is."""
    if callable(value):
        return value
    if isinstance(value, str) and value in table:
        return table[value]
    raise fail(fn, arg, f"a callable or one of {', '.join(repr(k) for k in table)}", repr(value))
