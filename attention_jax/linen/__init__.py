"""Flax linen modules, one thin wrapper per mechanism (same parameter trees as ``nnx``)."""

from attention_jax.linen.channel import *  # noqa: F403
from attention_jax.linen.channel import __all__ as _channel_all

__all__ = [*_channel_all]
