"""``jax.test_util.check_grads`` on the jitted function.

Op by op, every primitive of the function, of its linearisation and of its transpose compiles
on its own, once per shape (~25 ms each, most of a functional gradient test). Jitted, the
function compiles once for its evaluations at the perturbed points and once per transform.
The check itself is ``jax.test_util.check_grads``, unchanged: the same points, directions,
``eps`` and tolerances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.test_util import check_grads as _check_grads


def check_grads(f: Callable, args: Sequence[Any], order: int, **kwargs: Any) -> None:
    """``jax.test_util.check_grads(jax.jit(f), args, order, **kwargs)``."""
    _check_grads(jax.jit(f), args, order, **kwargs)
