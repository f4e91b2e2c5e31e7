"""Plans: what each mechanism derives from its options, written once below linen and nnx.

A plan is a small frozen dataclass, one per mechanism, built with
``<Mechanism>Plan.create(<the module's options>, fn=<name for error messages>)``. ``create``
validates the options (``ValueError("<Module>: <arg> must be ...")``) and derives the widths,
kernel sizes and paddings of the mechanism's layers; the fields hold the resolved values (e.g.
``SqueezeExcitePlan.rd_channels`` is the bottleneck width actually used, whether it came from
``rd_channels`` or from ``rd_ratio`` / ``rd_divisor``). The linen and nnx modules build their
layers from the plan and pass its options to the mechanism's one forward in
``attention_jax.functional``; they compute nothing themselves.

Plans import ``functional`` (for the width rules) and never ``linen``, ``nnx`` or ``models``.
"""

from attention_jax.plans._common import conv_padding, same_padding
from attention_jax.plans.channel import *  # noqa: F403
from attention_jax.plans.channel import __all__ as _channel_all
from attention_jax.plans.context import *  # noqa: F403
from attention_jax.plans.context import __all__ as _context_all
from attention_jax.plans.hybrid import *  # noqa: F403
from attention_jax.plans.hybrid import __all__ as _hybrid_all
from attention_jax.plans.saliency import *  # noqa: F403
from attention_jax.plans.saliency import __all__ as _saliency_all
from attention_jax.plans.selective import *  # noqa: F403
from attention_jax.plans.selective import __all__ as _selective_all
from attention_jax.plans.self_attention import *  # noqa: F403
from attention_jax.plans.self_attention import __all__ as _self_attention_all
from attention_jax.plans.spatial import *  # noqa: F403
from attention_jax.plans.spatial import __all__ as _spatial_all

__all__ = [
    "conv_padding", "same_padding",
    *_channel_all, *_hybrid_all, *_selective_all, *_saliency_all, *_spatial_all,
    *_self_attention_all, *_context_all,
]
