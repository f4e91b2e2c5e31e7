"""Leading batch dimensions for the functional forwards, written once.

Every public function of ``attention_jax.functional`` that takes a channels-last map accepts
``(..., H, W, C)``: no batch axis, one, or several, as ``flax.linen.Conv`` does. The forwards
themselves are written for one batch axis ``(N, H, W, C)``; ``batch_dims`` validates the
arrays it names, flattens their leading dimensions into that one axis, calls the forward, and
restores the leading dimensions on every output array.

Consequences, stated once:

* The layers a forward takes as callables always see one batch axis ``(N, ...)``, with ``N``
  the product of the leading dimensions (1 for an unbatched map).
* BatchNorm layers in training mode therefore compute their statistics over all leading
  dimensions together, exactly as for the flattened batch: ``(2, 3, H, W, C)`` normalises and
  updates the running statistics as ``(6, H, W, C)`` does. Under ``jax.vmap`` over single
  images a training-mode BatchNorm sees one image per call (per-example statistics, unless the
  layer is given an ``axis_name``); in eval mode (running statistics) ``vmap`` and the batched
  call agree.
* Every output array of a decorated forward has the flattened batch as its first axis
  (feature maps, transform parameters, grids, attention maps), so all of them get the leading
  dimensions back.
* A module that passes a whole attention module as a layer (DANet's PAM/CAM, PFA's CPFE and
  spatial attention) wraps it in ``keep_leading``: it then sees the caller's leading dims, so
  the maps it sows itself have them too (not the flattened batch).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, TypeVar

import jax

from attention_jax._validation import check_feature_map, fail, layout_rank, shape_of

__all__ = ["NHWC", "batch_dims", "flatten_leading", "keep_leading", "restore_leading"]

NHWC = "(..., H, W, C)"
"""The layout of a feature map: any leading batch dims, then height, width, channels."""

Fn = TypeVar("Fn", bound=Callable[..., Any])


def flatten_leading(a: jax.Array, core: int) -> jax.Array:
    """(..., *core_shape) -> (prod(...), *core_shape): one batch axis (1 when there is none)."""
    lead = a.shape[: a.ndim - core]
    if len(lead) == 1:
        return a
    return a.reshape((math.prod(lead),) + a.shape[a.ndim - core:])


def restore_leading(out: Any, lead: tuple[int, ...]) -> Any:
    """Give every array leaf of ``out`` (first axis: the flattened batch) the dims ``lead``."""
    if len(lead) == 1:
        return out

    def restore(y: Any) -> Any:
        if not hasattr(y, "shape") or len(y.shape) == 0:
            return y
        return y.reshape(tuple(lead) + tuple(y.shape[1:]))

    return jax.tree.map(restore, out)


def keep_leading(layer: Callable[..., Any], lead: tuple[int, ...]) -> Callable[..., Any]:
    """``layer`` called from inside a flattened forward, on the caller's leading dims ``lead``.

    The forward calls it with (prod(lead), ...); the wrapper gives the input the dims ``lead``,
    calls ``layer`` (which takes any leading dims) and flattens every output array again. For
    a submodule that sows its own attention maps: they get the caller's leading dims. With
    exactly one leading dimension it returns ``layer`` itself.
    """
    lead = tuple(lead)
    if len(lead) == 1:
        return layer

    def call(t: jax.Array, *args: Any, **kwargs: Any) -> Any:
        y = layer(restore_leading(t, lead), *args, **kwargs)
        return jax.tree.map(lambda a: a.reshape((math.prod(lead),) + a.shape[len(lead):]), y)

    return call


def batch_dims(**layouts: str) -> Callable[[Fn], Fn]:
    """Decorator: the named array arguments take any number of leading batch dimensions.

    Args:
      **layouts: argument name -> its layout, e.g. ``x="(..., H, W, C)"``; the named axes
        (all but ``...``) give the minimum rank. The first argument named is the reference:
        the others (skipped when None) must have the same leading dimensions.

    Returns:
      The decorator. The wrapped function validates each named argument
      (``check_feature_map``: floating, rank >= its layout's; errors name the function and the
      argument), flattens the leading dimensions into one axis, calls the function and gives
      every output array the leading dimensions back. With exactly one leading dimension it
      calls the function unchanged. Its docstring gains a note saying so.
    """
    names = tuple(layouts)
    cores = {name: layout_rank(layout) for name, layout in layouts.items()}

    def decorate(f: Fn) -> Fn:
        sig = inspect.signature(f)
        fn = f.__name__
        first = names[0]

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            ref = bound.arguments.get(first)
            check_feature_map(fn, first, ref, layout=layouts[first])
            lead = tuple(ref.shape[: ref.ndim - cores[first]])
            for name in names[1:]:
                a = bound.arguments.get(name)
                if a is None:
                    continue
                check_feature_map(fn, name, a, layout=layouts[name])
                if tuple(a.shape[: a.ndim - cores[name]]) != lead:
                    raise fail(fn, name, f"the leading (batch) dims {lead} of {first}",
                               f"shape {shape_of(a)}")
            if len(lead) == 1:
                return f(*args, **kwargs)
            for name in names:
                if bound.arguments.get(name) is not None:
                    bound.arguments[name] = flatten_leading(bound.arguments[name], cores[name])
            return restore_leading(f(*bound.args, **bound.kwargs), lead)

        args = ", ".join(f"``{n}`` {layouts[n]}" for n in names)
        wrapper.__doc__ = (f.__doc__ or "").rstrip() + (
            f"\n\n    Batch dimensions: {args} may have any number of leading dimensions, none "
            "included\n    (shapes above write them as N). They are flattened into one batch "
            "axis for the\n    computation (the layers see (N, ...); BatchNorm statistics "
            "cover all of them) and\n    restored on every output.\n")
        return wrapper  # type: ignore[return-value]

    return decorate
