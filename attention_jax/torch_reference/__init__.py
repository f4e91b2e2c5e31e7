"""PyTorch (NCHW) reference implementations, written from the papers and official code.

The oracle of the parity tests and the PyTorch side of ``attention-jax bench``: shipped in the
package so the benchmark runs from a wheel. Needs PyTorch (``pip install "attention-jax[bench]"``);
``import attention_jax`` never imports this package, and importing this package does not import
torch (its submodules do).

Submodule names match our parameter names so that ``weights.jax_to_torch_state`` maps one tree
onto the other by path; ``registry.REFERENCES`` builds the reference of every registered
mechanism at its ``create_attention`` defaults.

Independence: a reference never asks the code under test for a size. The widths and kernel
sizes below are this package's own copies of the published rules (timm's ``make_divisible``,
ECA-Net's kernel-size formula); the library's ``attention_jax.functional`` versions are checked
against them, not used by them.
"""

from __future__ import annotations

import math

from attention_jax._extras import require_spec

__all__ = ["make_divisible", "rd", "eca_kernel_size"]

require_spec("torch", "bench", "attention_jax.torch_reference (the PyTorch references)")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None,
                   round_limit: float = 0.9) -> int:
    """timm's channel rounding (``timm.layers.helpers.make_divisible``), copied, not imported.

    The nearest multiple of ``divisor`` to ``value`` (halves round up), at least ``min_value``
    (default ``divisor``); if that loses more than ``1 - round_limit`` of ``value``, one
    ``divisor`` more.
    """
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def rd(channels: int, rd_ratio: float = 1 / 16, rd_divisor: int = 8) -> int:
    """The bottleneck width of timm's attention layers at these settings.

    timm's ``SEModule``: ``make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)``;
    ``rd_divisor=1`` is the plain ``int(channels * rd_ratio)`` (timm's CBAM). Examples at the
    default ratio 1/16: 64 -> 8, 200 -> 16, 208 -> 16, 320 -> 24.
    """
    if rd_divisor == 1:
        return int(channels * rd_ratio)
    return make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """ECA-Net's adaptive 1-D kernel size (Wang et al., CVPR 2020, Eq. 12; official code
    ``t = int(abs((math.log(C, 2) + b) / gamma)); k = t if t % 2 else t + 1``).

    Examples: 64 -> 3, 256 -> 5, 512 -> 5, 2048 -> 7.
    """
    t = int(abs((math.log(channels, 2) + beta) / gamma))
    return t if t % 2 else t + 1
