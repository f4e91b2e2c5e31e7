"""Type aliases shared by functional, plans and the linen and nnx wrappers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
Dtype = Any
PrecisionLike = Any
Activation = str | Callable[[jax.Array], jax.Array]
Layer = Callable[[jax.Array], jax.Array]
"""A learned layer as the functional forwards take it: any ``array -> array`` callable."""
