"""Attention maps of the linen modules: sown into the ``"intermediates"`` collection on request.

A module asks its functional forward for its maps (``return_maps=True``) only when the caller
made ``"intermediates"`` mutable (``module.apply(variables, x, mutable=["intermediates"])``)
and the module is not being initialised, so the default call traces exactly the forward
without maps (no extra buffers) and ``init`` returns no intermediates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

__all__ = ["COLLECTION", "wants_maps", "sow_maps", "call_and_sow"]

COLLECTION = "intermediates"
"""The Flax collection the maps are sown into (Flax's own name for intermediates)."""


def wants_maps(module: nn.Module) -> bool:
    """Whether the caller collects maps: ``"intermediates"`` mutable, not initialising."""
    return module.is_mutable_collection(COLLECTION) and not module.is_initializing()


def sow_maps(module: nn.Module, maps: dict[str, Any]) -> None:
    """Sow each named map into ``"intermediates"`` (a tuple per name, one entry per call)."""
    for name, value in maps.items():
        module.sow(COLLECTION, name, value)


def call_and_sow(module: nn.Module, forward: Callable[..., Any], *args: Any, **kwargs: Any
                 ) -> Any:
    """``forward(*args, **kwargs)``, with ``return_maps=True`` and its maps sown if wanted."""
    if not wants_maps(module):
        return forward(*args, **kwargs)
    y, maps = forward(*args, return_maps=True, **kwargs)
    sow_maps(module, maps)
    return y
