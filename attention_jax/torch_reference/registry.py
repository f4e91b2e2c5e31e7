"""Torch references for every registered mechanism, built to match ``create_attention`` defaults.

``REFERENCES[name](channels)`` returns a torch module whose state dict has exactly the tensors
of ``create_attention(name, channels)`` (same names after ``weights.jax_to_torch_state``),
so parity tests and the benchmark harness can load one set of weights into both.
Each family adds its rows when it registers its mechanisms. Widths and kernel sizes come from
this package's own copies of the published rules (``rd``, ``eca_kernel_size``), never from the
library under test.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attention_jax.torch_reference import (
    channel,
    eca_kernel_size,
    hybrid,
    rd,
    saliency,
    selective,
    spatial,
)
from attention_jax.torch_reference import context as ref_context
from attention_jax.torch_reference import self_attention as ref_sa

REFERENCES: dict[str, Callable[[int], torch.nn.Module]] = {
    "se": lambda c: channel.SqueezeExcite(c, rd(c)),
    "eca": lambda c: channel.EfficientChannelAttention(c, eca_kernel_size(c)),
    "cbam": lambda c: hybrid.CBAM(c, rd(c)),
    "bam": lambda c: hybrid.BAM(c, rd(c)),
    "ge": lambda c: channel.GatherExcite(c, rd(c)),
    "gc": lambda c: channel.GlobalContext(c, rd(c)),
    "soca": lambda c: channel.SecondOrderChannel(c, rd(c)),
    "ca": lambda c: hybrid.CoordinateAttention(c, rd(c)),
    "sk": lambda c: selective.SelectiveKernel(c, rd_channels=max(rd(c), 32)),
    "splat": lambda c: selective.SplitAttention(c, rd_channels=max(rd(2 * c), 32)),
    "pfa": lambda c: saliency.ContextAwarePyramid(c, rd_channels=rd(c)),
    "stn": lambda c: spatial.SpatialTransformer(c),
    "nl": lambda c: ref_sa.NonLocal(c, c // 2),
    "pam": lambda c: ref_sa.PositionAttention(c, c // 8),
    "cam": lambda c: ref_sa.ChannelSelfAttention(c),
    "danet": lambda c: ref_sa.DualAttentionHead(c),
    "cca": lambda c: ref_sa.CrissCrossAttention(c, c // 8),
    "mhsa2d": lambda c: ref_sa.MultiHeadSelfAttention2d(c, 8),
    "aspp": lambda c: ref_context.ASPP(c),
}
