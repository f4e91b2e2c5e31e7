"""PyTorch (NCHW) reference implementations, written from the papers and official code.

Used only by tests and benchmarks. Submodule names match our parameter names so that
``tests.parity.jax_to_torch_state`` maps one tree onto the other by path.
"""

from attention_jax import functional as _F


def rd(channels: int, rd_ratio: float = 1 / 16, rd_divisor: int = 8) -> int:
    """The bottleneck width our modules pick by default (``F.reduced_channels``)."""
    return _F.reduced_channels("reference", channels, rd_ratio=rd_ratio, rd_channels=None,
                               rd_divisor=rd_divisor)
