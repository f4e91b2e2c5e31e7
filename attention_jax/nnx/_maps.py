"""Attention maps of the nnx modules: sown as ``nnx.Intermediate`` under ``nnx.capture``.

A module asks its functional forward for its maps (``return_maps=True``) only while it runs
under ``nnx.capture(..., nnx.Intermediate)`` (``y, maps = nnx.capture(model,
nnx.Intermediate)(x)``), so a plain call traces exactly the forward without maps (no extra
buffers) and stores nothing on the module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

__all__ = ["wants_maps", "sow_maps", "call_and_sow"]


def wants_maps(module: nnx.Module) -> bool:
    """Whether ``module`` runs under ``nnx.capture`` collecting ``nnx.Intermediate``.

    ``nnx.capture`` gives every module it covers a ``__captures__`` tuple of the collections
    it gathers (one ``Variable`` per type) for the duration of the call.
    """
    return any(type(v) is nnx.Intermediate for v in getattr(module, "__captures__", ()))


def sow_maps(module: nnx.Module, maps: dict[str, Any]) -> None:
    """Sow each named map as an ``nnx.Intermediate`` (a tuple per name, one entry per call)."""
    for name, value in maps.items():
        module.sow(nnx.Intermediate, name, value)


def call_and_sow(module: nnx.Module, forward: Callable[..., Any], *args: Any, **kwargs: Any
                 ) -> Any:
    """``forward(*args, **kwargs)``, with ``return_maps=True`` and its maps sown if wanted."""
    if not wants_maps(module):
        return forward(*args, **kwargs)
    y, maps = forward(*args, return_maps=True, **kwargs)
    sow_maps(module, maps)
    return y
