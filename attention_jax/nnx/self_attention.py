"""Self-attention over pixels as Flax nnx modules (thin wrappers over ``functional``).

Same parameter names and shapes as ``attention_jax.linen.self_attention``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Dtype, PrecisionLike
from attention_jax._validation import check_choice, check_nhwc, check_positive_int
from attention_jax.linen.self_attention import _check_mhsa, _check_size, _width
from attention_jax.nnx.context import ConvBNAct

__all__ = [
    "NonLocal",
    "PositionAttention",
    "ChannelSelfAttention",
    "DualAttentionHead",
    "CrissCrossAttention",
    "MultiHeadSelfAttention2d",
]


def _conv1x1(cin, cout, *, use_bias=True, zero=False, dtype, param_dtype, precision, rngs):
    kw = ({"kernel_init": nnx.initializers.zeros, "bias_init": nnx.initializers.zeros}
          if zero else {})
    return nnx.Conv(cin, cout, (1, 1), use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    precision=precision, rngs=rngs, **kw)


class NonLocal(nnx.Module):
    """Non-local block (Wang et al., CVPR 2018), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Same parameters and options as the linen
    module: ``theta``, ``phi``, ``g``, ``concat_project`` (concatenation mode), ``out_proj``,
    ``out_bn`` (with ``use_bn``; scale initialised to 0 so the block starts as the identity).
    """

    def __init__(
        self,
        channels: int,
        *,
        inter_channels: int | None = None,
        mode: str = "embedded_gaussian",
        use_scale: bool = True,
        sub_sample: bool = False,
        use_bn: bool = True,
        implementation: str = "auto",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        ci = _width("NonLocal", channels, inter_channels, 2)
        check_choice("NonLocal", "mode", mode, F.NON_LOCAL_MODES)
        conv = partial(_conv1x1, dtype=dtype, param_dtype=param_dtype, precision=precision,
                       rngs=rngs)
        self.channels, self.mode, self.use_scale = channels, mode, use_scale
        self.sub_sample, self.use_bn, self.implementation = sub_sample, use_bn, implementation
        self.precision = precision
        self.theta, self.phi, self.g = conv(channels, ci), conv(channels, ci), conv(channels, ci)
        self.concat_project = conv(2 * ci, 1, use_bias=False) if mode == "concatenation" else None
        self.out_proj = conv(ci, channels, zero=not use_bn)
        self.out_bn = (nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype,
                                     param_dtype=param_dtype, scale_init=nnx.initializers.zeros,
                                     rngs=rngs) if use_bn else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("NonLocal", "x", x, self.channels)
        out = (lambda y: self.out_bn(self.out_proj(y))) if self.use_bn else self.out_proj
        return F.non_local(x, theta=self.theta, phi=self.phi, g=self.g, out=out,
                           concat_project=self.concat_project, mode=self.mode,
                           use_scale=self.use_scale, sub_sample=self.sub_sample,
                           implementation=self.implementation, precision=self.precision)


class PositionAttention(nnx.Module):
    """DANet position attention module, PAM (Fu et al., CVPR 2019), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Parameters ``query``, ``key``, ``value``,
    ``gamma`` ((1,), initialised to 0), as the linen module.
    """

    def __init__(
        self,
        channels: int,
        *,
        qk_channels: int | None = None,
        implementation: str = "auto",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        cq = _width("PositionAttention", channels, qk_channels, 8)
        conv = partial(_conv1x1, dtype=dtype, param_dtype=param_dtype, precision=precision,
                       rngs=rngs)
        self.channels, self.implementation, self.precision = channels, implementation, precision
        self.query, self.key = conv(channels, cq), conv(channels, cq)
        self.value = conv(channels, channels)
        self.gamma = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("PositionAttention", "x", x, self.channels)
        return F.position_attention(x, query=self.query, key=self.key, value=self.value,
                                    gamma=self.gamma[...], implementation=self.implementation,
                                    precision=self.precision)


class ChannelSelfAttention(nnx.Module):
    """DANet channel attention module, CAM (Fu et al., CVPR 2019), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). One parameter: ``gamma`` ((1,), initialised
    to 0). The official code's ``rowmax(E) - E`` energy (see the functional docstring).
    """

    def __init__(
        self,
        channels: int,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        check_positive_int("ChannelSelfAttention", "channels", channels)
        self.channels = channels
        self.gamma = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("ChannelSelfAttention", "x", x, self.channels)
        return F.channel_self_attention(x, gamma=self.gamma[...])


class DualAttentionHead(nnx.Module):
    """DANet head (Fu et al., CVPR 2019): PAM and CAM branches, summed and fused; nnx.

    Input (N, H, W, C) -> output (N, H, W, out_channels or C). Same parameters as the linen
    module: ``conv5a``, ``conv5c``, ``sa``, ``sc``, ``conv51``, ``conv52``, ``conv8``.
    """

    def __init__(
        self,
        channels: int,
        *,
        out_channels: int | None = None,
        implementation: str = "auto",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        check_positive_int("DualAttentionHead", "channels", channels)
        if out_channels is not None:
            check_positive_int("DualAttentionHead", "out_channels", out_channels)
        ci = max(1, channels // 4)
        kw = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision, "rngs": rngs}
        self.channels = channels
        self.conv5a = ConvBNAct(channels, ci, kernel_size=3, **kw)
        self.conv5c = ConvBNAct(channels, ci, kernel_size=3, **kw)
        self.sa = PositionAttention(ci, implementation=implementation, **kw)
        self.sc = ChannelSelfAttention(ci, **kw)
        self.conv51 = ConvBNAct(ci, ci, kernel_size=3, **kw)
        self.conv52 = ConvBNAct(ci, ci, kernel_size=3, **kw)
        self.conv8 = _conv1x1(ci, out_channels or channels, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, Co)."""
        check_nhwc("DualAttentionHead", "x", x, self.channels)
        return F.dual_attention_head(x, conv5a=self.conv5a, conv5c=self.conv5c, pam=self.sa,
                                     cam=self.sc, conv51=self.conv51, conv52=self.conv52,
                                     conv8=self.conv8)


class CrissCrossAttention(nnx.Module):
    """Recurrent criss-cross attention, RCCA (Huang et al., ICCV 2019), nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Parameters ``query``, ``key``, ``value``,
    ``gamma`` as the linen module; the same weights applied ``recurrence`` times.
    """

    def __init__(
        self,
        channels: int,
        *,
        qk_channels: int | None = None,
        recurrence: int = 2,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        cq = _width("CrissCrossAttention", channels, qk_channels, 8)
        check_positive_int("CrissCrossAttention", "recurrence", recurrence)
        conv = partial(_conv1x1, dtype=dtype, param_dtype=param_dtype, precision=precision,
                       rngs=rngs)
        self.channels, self.recurrence, self.precision = channels, recurrence, precision
        self.query, self.key = conv(channels, cq), conv(channels, cq)
        self.value = conv(channels, channels)
        self.gamma = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        check_nhwc("CrissCrossAttention", "x", x, self.channels)
        return F.criss_cross_attention(x, query=self.query, key=self.key, value=self.value,
                                       gamma=self.gamma[...], recurrence=self.recurrence,
                                       precision=self.precision)


class MultiHeadSelfAttention2d(nnx.Module):
    """Multi-head self-attention over the pixels of a feature map, nnx.

    Input (N, H, W, C) -> output (N, H, W, C). Same parameters and options as the linen
    module: ``qkv``, ``proj``, and ``relative_position_bias_table`` or ``pos_embed``.
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 8,
        qkv_bias: bool = True,
        position: str = "none",
        input_size: tuple[int, int] | None = None,
        implementation: str = "auto",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        _check_mhsa("MultiHeadSelfAttention2d", channels, num_heads, position, input_size)
        lin = partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, precision=precision,
                      rngs=rngs)
        self.channels, self.num_heads, self.position = channels, num_heads, position
        self.input_size, self.implementation = input_size, implementation
        self.precision = precision
        self.qkv = lin(channels, 3 * channels, use_bias=qkv_bias)
        self.proj = lin(channels, channels)
        init = nnx.initializers.truncated_normal(0.02)
        if position == "relative":
            h, w = input_size
            self.relative_position_bias_table = nnx.Param(
                init(rngs.params(), ((2 * h - 1) * (2 * w - 1), num_heads), param_dtype))
        elif position == "absolute":
            h, w = input_size
            self.pos_embed = nnx.Param(init(rngs.params(), (1, h, w, channels), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (N, H, W, C). Returns (N, H, W, C)."""
        fn = "MultiHeadSelfAttention2d"
        check_nhwc(fn, "x", x, self.channels)
        _check_size(fn, x, self.position, self.input_size)
        table = getattr(self, "relative_position_bias_table", None)
        pos = getattr(self, "pos_embed", None)
        return F.multi_head_self_attention_2d(
            x, qkv=self.qkv, proj=self.proj, num_heads=self.num_heads,
            pos_embed=None if pos is None else pos[...],
            rel_pos_table=None if table is None else table[...],
            implementation=self.implementation, precision=self.precision)
