"""Type aliases shared by the linen and nnx wrappers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
Dtype = Any
PrecisionLike = Any
Activation = str | Callable[[jax.Array], jax.Array]
