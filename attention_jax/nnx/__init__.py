"""Flax nnx modules, one thin wrapper per mechanism (same parameter trees as ``linen``)."""

from attention_jax.nnx.channel import *  # noqa: F403
from attention_jax.nnx.channel import __all__ as _channel_all
from attention_jax.nnx.context import *  # noqa: F403
from attention_jax.nnx.context import __all__ as _context_all
from attention_jax.nnx.hybrid import *  # noqa: F403
from attention_jax.nnx.hybrid import __all__ as _hybrid_all
from attention_jax.nnx.saliency import *  # noqa: F403
from attention_jax.nnx.saliency import __all__ as _saliency_all
from attention_jax.nnx.selective import *  # noqa: F403
from attention_jax.nnx.selective import __all__ as _selective_all
from attention_jax.nnx.self_attention import *  # noqa: F403
from attention_jax.nnx.self_attention import __all__ as _self_attention_all
from attention_jax.nnx.spatial import *  # noqa: F403
from attention_jax.nnx.spatial import __all__ as _spatial_all

__all__ = [*_channel_all, *_hybrid_all, *_selective_all, *_saliency_all, *_spatial_all,
           *_self_attention_all, *_context_all]
