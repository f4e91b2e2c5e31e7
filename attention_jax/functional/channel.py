"""Channel attention forwards (SE, ECA, ...): the wiring, written once for linen and nnx.

Each function takes the feature map plus the learned layers as plain callables (any
``array -> array`` function: a Flax linen or nnx layer, or a closure over explicit weights), so
the linen and nnx modules share one forward and users can call the math with their own weights.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from attention_jax._validation import check_nhwc
from attention_jax.functional.gating import get_act, get_gate, rescale
from attention_jax.functional.pooling import global_avg_pool, global_max_pool

__all__ = ["squeeze_excite"]

Layer = Callable[[jax.Array], jax.Array]


def squeeze_excite(
    x: jax.Array,
    *,
    reduce: Layer,
    expand: Layer,
    act: str | Layer = "relu",
    gate: str | Layer = "sigmoid",
    add_maxpool: bool = False,
) -> jax.Array:
    """Squeeze-and-excitation: global pool -> reduce -> act -> expand -> gate -> rescale.

    Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018. With ``add_maxpool`` the squeeze is
    ``0.5 * (avg + max)`` as in timm's ``SEModule(add_maxpool=True)``.

    Args:
      x: (N, H, W, C) feature map.
      reduce: layer mapping (N, 1, 1, C) -> (N, 1, 1, R).
      expand: layer mapping (N, 1, 1, R) -> (N, 1, 1, C).
      act: hidden activation (name or callable).
      gate: gate (name or callable).
      add_maxpool: average the avg- and max-pooled descriptors.

    Returns:
      (N, H, W, C), dtype of ``x``.
    """
    check_nhwc("squeeze_excite", "x", x)
    act_fn, gate_fn = get_act(act), get_gate(gate)
    s = global_avg_pool(x, keepdims=True)
    if add_maxpool:
        s = 0.5 * s + 0.5 * global_max_pool(x, keepdims=True)
    w = gate_fn(expand(act_fn(reduce(s))))
    return rescale(x, w)
