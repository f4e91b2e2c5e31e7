"""Plan of ASPP (convolutional context). See ``attention_jax.plans`` for what a plan is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attention_jax._validation import fail
from attention_jax.plans._common import check_channels, check_int_tuple, check_optional_channels

__all__ = ["ASPPPlan"]


@dataclass(frozen=True)
class ASPPPlan:
    """ASPP: ``b0`` (1x1), ``b{i}`` (3x3, dilation ``atrous_rates[i-1]``), ``pool`` (1x1 on the
    global average), all C -> out, and ``project`` (1x1, ``concat_channels`` -> out); each a
    conv-BN-ReLU.

    Fields: ``channels``, ``out_channels`` (resolved), ``atrous_rates``, ``concat_channels``
    (``out * (len(atrous_rates) + 2)``).
    """

    channels: int
    out_channels: int
    atrous_rates: tuple[int, ...]
    concat_channels: int

    @property
    def num_branches(self) -> int:
        """The 1x1 branch and one per atrous rate (the pooled branch not counted)."""
        return len(self.atrous_rates) + 1

    @classmethod
    def create(
        cls, channels: int, *, out_channels: int | None = None,
        atrous_rates: Sequence[int] = (6, 12, 18), fn: str = "ASPP",
    ) -> ASPPPlan:
        """Validate the options (errors name ``fn``). Returns the plan."""
        c = check_channels(fn, channels)
        out = check_optional_channels(fn, "out_channels", out_channels) or c
        if not isinstance(atrous_rates, (tuple, list)) or not atrous_rates:
            raise fail(fn, "atrous_rates", "a non-empty tuple of positive integers",
                       repr(atrous_rates))
        rates = check_int_tuple(fn, "atrous_rates", atrous_rates)
        return cls(c, out, rates, out * (len(rates) + 2))
