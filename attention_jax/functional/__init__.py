"""Pure functions: pooling, gating, sampling, scoring and the mechanisms' shared forwards.

Arrays in, arrays out; no parameters created, no state. Safe under ``jit``, ``vmap``, ``grad``.
"""

from attention_jax.functional.channel import *  # noqa: F403
from attention_jax.functional.channel import __all__ as _channel_all
from attention_jax.functional.gating import *  # noqa: F403
from attention_jax.functional.gating import __all__ as _gating_all
from attention_jax.functional.pooling import *  # noqa: F403
from attention_jax.functional.pooling import __all__ as _pooling_all

__all__ = [*_pooling_all, *_gating_all, *_channel_all]
