"""Plans of the self-attention mechanisms (non-local, DANet, criss-cross, multi-head).

See ``attention_jax.plans`` for what a plan is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from attention_jax import functional as F
from attention_jax._validation import check_choice, check_divides, check_positive_int, fail
from attention_jax.functional.scoring import _IMPLEMENTATIONS as IMPLEMENTATIONS
from attention_jax.plans._common import check_channels, check_optional_channels

__all__ = [
    "POSITIONS",
    "NonLocalPlan",
    "PositionAttentionPlan",
    "ChannelSelfAttentionPlan",
    "DualAttentionHeadPlan",
    "CrissCrossAttentionPlan",
    "MultiHeadSelfAttention2dPlan",
]

POSITIONS = ("none", "absolute", "relative")
"""``MultiHeadSelfAttention2d(position=...)``: no position, a learned embedding, or a learned
Swin-style relative-position bias."""


@dataclass(frozen=True)
class NonLocalPlan:
    """Non-local block: ``theta``, ``phi``, ``g`` (1x1 C -> Ci), ``concat_project`` (for
    ``mode="concatenation"``: 1x1 2Ci -> 1), ``out_proj`` (1x1 Ci -> C), ``out_bn``.

    Fields: ``channels``, ``inter_channels`` Ci (given, or C // 2 floored at 1), ``mode``,
    ``use_scale``, ``sub_sample``, ``use_bn``, ``implementation``.
    """

    channels: int
    inter_channels: int
    mode: str
    use_scale: bool
    sub_sample: bool
    use_bn: bool
    implementation: str

    def check_input(self, x: Any, fn: str = "NonLocal") -> None:
        """With ``sub_sample``, ``x`` needs at least 2x2 pixels (the keys are 2x2 max-pooled)."""
        if self.sub_sample and min(x.shape[-3:-1]) < 2:
            raise fail(fn, "x", "at least 2x2 pixels for sub_sample=True",
                       f"shape {tuple(x.shape)}")

    @property
    def has_concat_project(self) -> bool:
        """Whether the block has ``concat_project`` (``mode="concatenation"``)."""
        return self.mode == "concatenation"

    @classmethod
    def create(
        cls, channels: int, *, inter_channels: int | None = None,
        mode: str = "embedded_gaussian", use_scale: bool = True, sub_sample: bool = False,
        use_bn: bool = True, implementation: str = "auto", fn: str = "NonLocal",
    ) -> NonLocalPlan:
        """Validate the options (errors name ``fn``) and derive Ci. Returns the plan."""
        c = check_channels(fn, channels)
        ci = check_optional_channels(fn, "inter_channels", inter_channels) or max(1, c // 2)
        check_choice(fn, "mode", mode, F.NON_LOCAL_MODES)
        check_choice(fn, "implementation", implementation, IMPLEMENTATIONS)
        return cls(c, ci, mode, bool(use_scale), bool(sub_sample), bool(use_bn),
                   implementation)


@dataclass(frozen=True)
class PositionAttentionPlan:
    """DANet PAM: ``query``, ``key`` (1x1 C -> Cq), ``value`` (1x1 C -> C), ``gamma``.

    Fields: ``channels``, ``qk_channels`` Cq (given, or C // 8 floored at 1),
    ``implementation``.
    """

    channels: int
    qk_channels: int
    implementation: str

    @classmethod
    def create(
        cls, channels: int, *, qk_channels: int | None = None, implementation: str = "auto",
        fn: str = "PositionAttention",
    ) -> PositionAttentionPlan:
        """Validate the options (errors name ``fn``) and derive Cq. Returns the plan."""
        c = check_channels(fn, channels)
        cq = check_optional_channels(fn, "qk_channels", qk_channels) or max(1, c // 8)
        check_choice(fn, "implementation", implementation, IMPLEMENTATIONS)
        return cls(c, cq, implementation)


@dataclass(frozen=True)
class ChannelSelfAttentionPlan:
    """DANet CAM: one parameter, ``gamma``. Fields: ``channels``."""

    channels: int

    @classmethod
    def create(cls, channels: int, *, fn: str = "ChannelSelfAttention") -> ChannelSelfAttentionPlan:
        """Validate the options (errors name ``fn``). Returns the plan."""
        return cls(check_channels(fn, channels))


@dataclass(frozen=True)
class DualAttentionHeadPlan:
    """DANet head: ``conv5a``/``conv5c`` (3x3 conv-BN-ReLU C -> Ci), ``sa`` (PAM on Ci), ``sc``
    (CAM on Ci), ``conv51``/``conv52`` (Ci -> Ci), ``conv8`` (1x1 Ci -> out).

    Fields: ``channels``, ``out_channels`` (resolved), ``inter_channels`` Ci (C // 4 floored
    at 1), ``implementation``.
    """

    channels: int
    out_channels: int
    inter_channels: int
    implementation: str

    @classmethod
    def create(
        cls, channels: int, *, out_channels: int | None = None, implementation: str = "auto",
        fn: str = "DualAttentionHead",
    ) -> DualAttentionHeadPlan:
        """Validate the options (errors name ``fn``) and derive Ci. Returns the plan."""
        c = check_channels(fn, channels)
        out = check_optional_channels(fn, "out_channels", out_channels) or c
        check_choice(fn, "implementation", implementation, IMPLEMENTATIONS)
        return cls(c, out, max(1, c // 4), implementation)


@dataclass(frozen=True)
class CrissCrossAttentionPlan:
    """RCCA: ``query``, ``key`` (1x1 C -> Cq), ``value`` (1x1 C -> C), ``gamma``.

    Fields: ``channels``, ``qk_channels`` Cq (given, or C // 8 floored at 1), ``recurrence``.
    """

    channels: int
    qk_channels: int
    recurrence: int

    @classmethod
    def create(
        cls, channels: int, *, qk_channels: int | None = None, recurrence: int = 2,
        fn: str = "CrissCrossAttention",
    ) -> CrissCrossAttentionPlan:
        """Validate the options (errors name ``fn``) and derive Cq. Returns the plan."""
        c = check_channels(fn, channels)
        cq = check_optional_channels(fn, "qk_channels", qk_channels) or max(1, c // 8)
        check_positive_int(fn, "recurrence", recurrence)
        return cls(c, cq, int(recurrence))


@dataclass(frozen=True)
class MultiHeadSelfAttention2dPlan:
    """Multi-head self-attention over pixels: ``qkv`` (Dense C -> 3C), ``proj`` (C -> C), and a
    ``relative_position_bias_table`` of shape ``rel_table_shape`` or a ``pos_embed`` of shape
    ``pos_embed_shape``.

    Fields: ``channels``, ``num_heads`` (divides C), ``qkv_bias``, ``position`` (one of
    ``POSITIONS``), ``input_size`` ((H, W), required unless ``position="none"``),
    ``implementation``.
    """

    channels: int
    num_heads: int
    qkv_bias: bool
    position: str
    input_size: tuple[int, int] | None
    implementation: str

    @property
    def rel_table_shape(self) -> tuple[int, int]:
        """((2H - 1)(2W - 1), heads), for ``position="relative"``."""
        h, w = self.input_size
        return ((2 * h - 1) * (2 * w - 1), self.num_heads)

    @property
    def pos_embed_shape(self) -> tuple[int, int, int, int]:
        """(1, H, W, C), for ``position="absolute"``."""
        h, w = self.input_size
        return (1, h, w, self.channels)

    def check_input(self, x: Any, fn: str = "MultiHeadSelfAttention2d") -> None:
        """With a position, ``x`` must have the spatial size ``input_size``."""
        if self.position != "none" and tuple(x.shape[-3:-1]) != self.input_size:
            raise fail(fn, "x", f"spatial size {self.input_size} (input_size, for "
                       f"position={self.position!r})", f"shape {tuple(x.shape)}")

    @classmethod
    def create(
        cls, channels: int, *, num_heads: int = 8, qkv_bias: bool = True,
        position: str = "none", input_size: Sequence[int] | None = None,
        implementation: str = "auto", fn: str = "MultiHeadSelfAttention2d",
    ) -> MultiHeadSelfAttention2dPlan:
        """Validate the options (errors name ``fn``). Returns the plan."""
        c = check_channels(fn, channels)
        check_positive_int(fn, "num_heads", num_heads)
        check_divides(fn, "channels", c, "num_heads", num_heads)
        check_choice(fn, "position", position, POSITIONS)
        check_choice(fn, "implementation", implementation, IMPLEMENTATIONS)
        size = None
        if position != "none":
            ok = (isinstance(input_size, (tuple, list)) and len(input_size) == 2
                  and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                          for s in input_size))
            if not ok:
                raise fail(fn, "input_size", f"(H, W) positive ints for position={position!r}",
                           repr(input_size))
            size = (int(input_size[0]), int(input_size[1]))
        elif isinstance(input_size, (tuple, list)):
            size = tuple(input_size)
        return cls(c, int(num_heads), bool(qkv_bias), position, size, implementation)
