"""Build any attention mechanism by short name: ``create_attention("cbam", 256)``.

Like timm's ``create_attn``: a backbone takes ``attention="se"`` and users swap mechanisms by
name. Each name maps to one class name that exists in both ``attention_jax.linen`` and
``attention_jax.nnx``.
"""

from __future__ import annotations

import importlib
from typing import Any

from attention_jax._validation import check_choice, fail

__all__ = ["create_attention", "list_attention", "get_attention_class", "SHARED_DEFAULTS"]

# name -> class name (same in linen and nnx). Later families add their rows here.
_REGISTRY: dict[str, str] = {
    "se": "SqueezeExcite",
    "eca": "EfficientChannelAttention",
    "cbam": "CBAM",
    "bam": "BAM",
    "ge": "GatherExcite",
    "gc": "GlobalContext",
    "soca": "SecondOrderChannel",
    "ca": "CoordinateAttention",
    "sk": "SelectiveKernel",
    "splat": "SplitAttention",
    "pfa": "ContextAwarePyramid",
    "stn": "SpatialTransformer",
    "nl": "NonLocal",
    "pam": "PositionAttention",
    "cam": "ChannelSelfAttention",
    "danet": "DualAttentionHead",
    "cca": "CrissCrossAttention",
    "mhsa2d": "MultiHeadSelfAttention2d",
    "aspp": "ASPP",
}

SHARED_DEFAULTS: dict[str, Any] = {
    "rd_ratio": 1.0 / 16,
    "rd_channels": None,
    "rd_divisor": 8,
    "act": "relu",
    "gate": "sigmoid",
}
"""The shared knobs: wherever a mechanism has one of these, it has this default and meaning."""

_APIS = ("linen", "nnx")


def list_attention() -> list[str]:
    """The registered mechanism names, sorted.

    Returns:
      List of names accepted by ``create_attention``.
    """
    return sorted(_REGISTRY)


def get_attention_class(name: str, *, api: str = "linen") -> type:
    """The linen or nnx class registered under ``name``.

    Args:
      name: a registered name (see ``list_attention()``).
      api: ``"linen"`` or ``"nnx"``.

    Returns:
      The module class.
    """
    check_choice("get_attention_class", "name", name, list_attention())
    check_choice("get_attention_class", "api", api, _APIS)
    module = importlib.import_module(f"attention_jax.{api}")
    return getattr(module, _REGISTRY[name])


def create_attention(name: str, channels: int, *, api: str = "linen", **kwargs: Any) -> Any:
    """Build an attention mechanism by name.

    Args:
      name: registered name, e.g. ``"se"``, ``"eca"``, ``"cbam"`` (see ``list_attention()``).
      channels: channels C of the (..., H, W, C) feature map it will attend over (any
        leading batch dims, none included).
      api: ``"linen"`` (returns an unbound ``nn.Module``) or ``"nnx"`` (needs ``rngs=``).
      **kwargs: the mechanism's own fields (``rd_ratio``, ``gate``, ...).

    Returns:
      The module; applied to (..., H, W, C) it returns (..., H, W, C) at the defaults
      (options such as a stride or ``out_channels`` change H, W or C).
    """
    cls = get_attention_class(name, api=api)
    if api == "nnx" and "rngs" not in kwargs:
        raise fail("create_attention", "rngs", "given for api='nnx' (e.g. rngs=nnx.Rngs(0))",
                   "nothing")
    return cls(channels, **kwargs)
