"""Pure functions: pooling, gating, sampling, scoring and the mechanisms' shared forwards.

Arrays in, arrays out; no parameters created, no state. Safe under ``jit``, ``vmap``, ``grad``.
"""

from attention_jax.functional.channel import *  # noqa: F403
from attention_jax.functional.channel import __all__ as _channel_all
from attention_jax.functional.context import *  # noqa: F403
from attention_jax.functional.context import __all__ as _context_all
from attention_jax.functional.gating import *  # noqa: F403
from attention_jax.functional.gating import __all__ as _gating_all
from attention_jax.functional.hybrid import *  # noqa: F403
from attention_jax.functional.hybrid import __all__ as _hybrid_all
from attention_jax.functional.pooling import *  # noqa: F403
from attention_jax.functional.pooling import __all__ as _pooling_all
from attention_jax.functional.saliency import *  # noqa: F403
from attention_jax.functional.saliency import __all__ as _saliency_all
from attention_jax.functional.sampling import *  # noqa: F403
from attention_jax.functional.sampling import __all__ as _sampling_all
from attention_jax.functional.scoring import *  # noqa: F403
from attention_jax.functional.scoring import __all__ as _scoring_all
from attention_jax.functional.selective import *  # noqa: F403
from attention_jax.functional.selective import __all__ as _selective_all
from attention_jax.functional.self_attention import *  # noqa: F403
from attention_jax.functional.self_attention import __all__ as _self_attention_all
from attention_jax.functional.spatial import *  # noqa: F403
from attention_jax.functional.spatial import __all__ as _spatial_all

__all__ = [
    *_pooling_all, *_gating_all, *_channel_all, *_hybrid_all, *_selective_all, *_saliency_all,
    *_sampling_all, *_spatial_all, *_scoring_all, *_self_attention_all, *_context_all
]
