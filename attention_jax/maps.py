"""Collect the attention maps a model computes: ``y, maps = attention_jax.intermediates(...)``.

Every module of ``attention_jax.linen`` and ``attention_jax.nnx`` that computes an attention
map sows it, under the names listed in each module's docstring (and in CONTRIBUTING.md's
table), without changing its output. Nothing is computed or kept unless asked for:

* linen: the maps go into the ``"intermediates"`` collection when the caller makes it
  mutable, ``y, state = model.apply(variables, x, mutable=["intermediates"])`` (add
  ``"batch_stats"`` when training); ``state["intermediates"]`` holds them. ``init`` sows
  nothing.
* nnx: the maps are ``nnx.Intermediate`` values, sown only under ``nnx.capture``:
  ``y, state = nnx.capture(model, nnx.Intermediate)(x)``; ``nnx.to_pure_dict(state)`` gives
  plain dicts. A plain ``model(x)`` stores nothing on the model.

Both give the same nested structure: a dict per submodule on the path to the module that sowed
(none for a module called directly), and under each name a tuple with one entry per call (Flax's
convention), e.g. ``{"channel_weights": (w,), "spatial_map": (m,)}`` for a CBAM block.
``intermediates`` below does either call.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
from flax import nnx
from flax.core import unfreeze

from attention_jax._validation import fail

__all__ = ["intermediates", "INTERMEDIATES"]

INTERMEDIATES = "intermediates"
"""The linen collection the maps are sown into (Flax's own name for intermediate values)."""


def intermediates(
    model: nn.Module | nnx.Module,
    *args: Any,
    variables: Any = None,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """Call a linen or nnx model and return its output together with the maps it sowed.

    linen: ``model.apply(variables, *args, mutable=["intermediates"], **kwargs)``; nnx:
    ``nnx.capture(model, nnx.Intermediate)(*args, **kwargs)``. The output is the one the plain
    call gives. For a linen model trained with BatchNorm, call ``apply`` yourself with
    ``mutable=["batch_stats", "intermediates"]`` to keep the updated statistics too.

    Example (runs in ``tests/test_intermediates.py``)::

        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> import attention_jax as aj
        >>> x = jnp.ones((2, 8, 8, 16))
        >>> cbam = aj.linen.CBAM(16)
        >>> variables = cbam.init(jax.random.key(0), x)
        >>> y, maps = aj.intermediates(cbam, x, variables=variables)
        >>> {name: m[0].shape for name, m in maps.items()}
        {'channel_weights': (2, 1, 1, 16), 'spatial_map': (2, 8, 8, 1)}
        >>> bool(jnp.array_equal(y, cbam.apply(variables, x)))
        True
        >>> nl = aj.nnx.NonLocal(16, rngs=nnx.Rngs(0))
        >>> y, maps = aj.intermediates(nl, x)
        >>> maps["attention"][0].shape  # (N, H*W, H*W): one softmax row per query pixel
        (2, 64, 64)

    Args:
      model: a ``flax.linen.Module`` (with ``variables``) or an ``flax.nnx.Module``.
      *args: the model's positional inputs (e.g. the (N, H, W, C) feature map).
      variables: the linen model's variables (``model.init(...)``); None for nnx.
      **kwargs: the model's keyword arguments (``train=``, or linen's ``method=``).

    Returns:
      ``(output, maps)``: the model's output and a nested dict of plain Python dicts, one
      level per submodule on the path to each sowing module, whose leaves are tuples of
      arrays (one per call; shapes as documented by each module).
    """
    fn = "intermediates"
    if isinstance(model, nn.Module):
        if variables is None:
            raise fail(fn, "variables", "the linen model's variables (model.init(...))", "None")
        if "mutable" in kwargs:
            raise fail(fn, "mutable", "not given (call model.apply with mutable=[..., "
                       f"{INTERMEDIATES!r}] to update other collections too)",
                       repr(kwargs["mutable"]))
        y, state = model.apply(variables, *args, mutable=[INTERMEDIATES], **kwargs)
        return y, dict(unfreeze(state.get(INTERMEDIATES, {})))
    if isinstance(model, nnx.Module):
        if variables is not None:
            raise fail(fn, "variables", "None for an nnx model (its state lives in it)",
                       type(variables).__name__)
        y, state = nnx.capture(model, nnx.Intermediate)(*args, **kwargs)
        return y, nnx.to_pure_dict(state)
    raise fail(fn, "model", "a flax.linen or flax.nnx Module", type(model).__name__)
