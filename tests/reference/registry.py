"""Torch references for every registered mechanism, built to match ``create_attention`` defaults.

``REFERENCES[name](channels)`` returns a torch module whose state dict has exactly the tensors
of ``create_attention(name, channels)`` (same names after ``tests.parity.jax_to_torch_state``),
so parity tests and the benchmark harness can load one set of weights into both.
Each family adds its rows when it registers its mechanisms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attention_jax import functional as F
from tests.reference import channel

SHAPE_PRESERVING = True


def _rd(channels: int, rd_ratio: float = 1 / 16, rd_divisor: int = 8) -> int:
    return F.reduced_channels("reference", channels, rd_ratio=rd_ratio, rd_channels=None,
                              rd_divisor=rd_divisor)


REFERENCES: dict[str, Callable[[int], torch.nn.Module]] = {
    "se": lambda c: channel.SqueezeExcite(c, _rd(c)),
}
