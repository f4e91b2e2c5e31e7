"""Option checks and derived sizes that several plans (and both layer factories) share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from attention_jax import functional as F
from attention_jax._validation import check_callable_or_name, check_positive_int, fail

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]
"""A conv padding in PyTorch's spelling (see ``conv_padding``)."""


def check_channels(fn: str, channels: Any, arg: str = "channels") -> int:
    """``channels`` must be an integer >= 1 (not a bool, not a float); returns it as an int."""
    check_positive_int(fn, arg, channels)
    return int(channels)


def check_optional_channels(fn: str, arg: str, value: Any) -> int | None:
    """None, or an integer >= 1."""
    return None if value is None else check_channels(fn, value, arg)


@contextlib.contextmanager
def errors_named(fn: str) -> Iterator[None]:
    """Re-raise a ``ValueError("<helper>: <arg> must be ...")`` of a functional helper the plan
    calls as ``ValueError("<fn>: <arg> must be ...")``: the user called ``fn``."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{fn}: {str(e).split(': ', 1)[-1]}") from None


def check_act(fn: str, act: Any) -> None:
    """``act``: a callable or a name in ``F.ACTIVATIONS`` (checked with the plan, naming ``fn``)."""
    check_callable_or_name(fn, "act", act, F.ACTIVATIONS)


def check_gate(fn: str, gate: Any) -> None:
    """``gate``: a callable or a name in ``F.GATES`` (checked with the plan, naming ``fn``)."""
    check_callable_or_name(fn, "gate", gate, F.GATES)


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """The symmetric padding that keeps a stride-1 conv's size: ``dilation * (k - 1) // 2``.

    Args:
      kernel_size: odd kernel size k.
      dilation: kernel dilation d.

    Returns:
      The padding on each side (an int).
    """
    return dilation * (kernel_size - 1) // 2


def conv_padding(
    padding: Padding, ndim: int, *, fn: str = "conv"
) -> str | tuple[tuple[int, int], ...]:
    """A conv padding in PyTorch's spelling -> Flax's explicit ``((lo, hi), ...)`` pairs.

    As ``torch.nn.Conv2d(padding=...)``: an int pads every spatial axis by that much on both
    sides, a sequence of ``ndim`` ints pads axis i by ``padding[i]`` on both sides; a sequence
    of ``ndim`` ``(lo, hi)`` pairs is explicit. A string (``"SAME"``, ``"VALID"``, ...) is
    passed to Flax unchanged.

    Args:
      padding: int, ints, pairs, or a Flax padding string.
      ndim: number of spatial axes of the conv (``len(kernel_size)``).
      fn: name of the caller, for error messages.

    Returns:
      The padding string, or a tuple of ``ndim`` ``(lo, hi)`` int pairs.
    """
    if isinstance(padding, str):
        return padding
    if isinstance(padding, (int,)) and not isinstance(padding, bool):
        check_positive_int(fn, "padding", padding, minimum=0)
        return ((int(padding), int(padding)),) * ndim
    if isinstance(padding, Sequence) and len(padding) == ndim:
        pairs = []
        for p in padding:
            if isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2:
                lo, hi = p
            else:
                lo = hi = p
            check_positive_int(fn, "padding", lo, minimum=0)
            check_positive_int(fn, "padding", hi, minimum=0)
            pairs.append((int(lo), int(hi)))
        return tuple(pairs)
    raise fail(fn, "padding", f"an int, {ndim} ints, {ndim} (lo, hi) pairs or a padding string",
               repr(padding))


def check_int_tuple(fn: str, arg: str, value: Any, *, minimum: int = 1) -> tuple[int, ...]:
    """A non-string sequence of integers >= ``minimum``, as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise fail(fn, arg, f"a sequence of integers >= {minimum}", repr(value))
    for v in value:
        check_positive_int(fn, arg, v, minimum=minimum)
    return tuple(int(v) for v in value)
