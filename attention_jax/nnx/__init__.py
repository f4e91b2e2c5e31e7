"""Flax nnx modules, one thin wrapper per mechanism (same parameter trees as ``linen``)."""

from attention_jax.nnx.channel import *  # noqa: F403
from attention_jax.nnx.channel import __all__ as _channel_all

__all__ = [*_channel_all]
