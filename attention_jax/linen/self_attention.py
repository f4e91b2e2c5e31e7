"""Self-attention over pixels as Flax linen modules (thin wrappers over ``functional``).

Non-local, DANet (PAM, CAM, head), criss-cross and multi-head self-attention. Softmax over all
pixels runs through ``functional.attention``; with ``implementation="auto"`` (the default) large
maps use its chunked, memory-efficient path.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import functional as F
from attention_jax._types import Dtype, PrecisionLike
from attention_jax._validation import (
    check_choice,
    check_divides,
    check_nhwc,
    check_positive_int,
    fail,
)
from attention_jax.linen.context import ConvBNAct

__all__ = [
    "NonLocal",
    "PositionAttention",
    "ChannelSelfAttention",
    "DualAttentionHead",
    "CrissCrossAttention",
    "MultiHeadSelfAttention2d",
]

POSITIONS = ("none", "absolute", "relative")


def _width(fn: str, channels: int, given: int | None, divisor: int) -> int:
    check_positive_int(fn, "channels", channels)
    if given is not None:
        check_positive_int(fn, "inter_channels" if divisor == 2 else "qk_channels", given)
        return int(given)
    return max(1, channels // divisor)


def _conv1x1(features, *, use_bias=True, zero=False, dtype, param_dtype, precision):
    kw = {"kernel_init": nn.initializers.zeros, "bias_init": nn.initializers.zeros} if zero else {}
    return nn.Conv(features, (1, 1), use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                   precision=precision, **kw)


def _check_mhsa(fn, channels, num_heads, position, input_size):
    check_positive_int(fn, "channels", channels)
    check_positive_int(fn, "num_heads", num_heads)
    check_divides(fn, "channels", channels, "num_heads", num_heads)
    check_choice(fn, "position", position, POSITIONS)
    if position != "none":
        ok = (isinstance(input_size, (tuple, list)) and len(input_size) == 2
              and all(isinstance(s, int) and s >= 1 for s in input_size))
        if not ok:
            raise fail(fn, "input_size", f"(H, W) positive ints for position={position!r}",
                       repr(input_size))


def _check_size(fn, x, position, input_size):
    if position != "none" and tuple(x.shape[1:3]) != tuple(input_size):
        raise fail(fn, "x", f"spatial size {tuple(input_size)} (input_size, for "
                   f"position={position!r})", f"shape {tuple(x.shape)}")


class NonLocal(nn.Module):
    """Non-local block (Wang et al., CVPR 2018), linen.

    Input (N, H, W, C) -> output (N, H, W, C). Parameters: ``theta``, ``phi``, ``g`` (1x1 conv
    C -> Ci, Ci = ``inter_channels`` or C // 2), ``concat_project`` (``mode="concatenation"``
    only: 1x1 conv 2Ci -> 1, no bias), ``out_proj`` (1x1 conv Ci -> C) and, with ``use_bn``,
    ``out_bn`` (BatchNorm). The block starts as the identity: ``out_bn``'s scale is initialised
    to zero (or, without BN, ``out_proj``'s weights and bias), as the official code.
    ``mode`` is ``"embedded_gaussian"``, ``"dot_product"`` or ``"concatenation"``;
    ``use_scale`` divides embedded-Gaussian logits by sqrt(Ci) (official code, mmcv);
    ``sub_sample`` max-pools keys and values 2x2.
    """

    channels: int
    inter_channels: int | None = None
    mode: str = "embedded_gaussian"
    use_scale: bool = True
    sub_sample: bool = False
    use_bn: bool = True
    implementation: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        ci = _width("NonLocal", self.channels, self.inter_channels, 2)
        check_choice("NonLocal", "mode", self.mode, F.NON_LOCAL_MODES)
        conv = partial(_conv1x1, dtype=self.dtype, param_dtype=self.param_dtype,
                       precision=self.precision)
        self.theta, self.phi, self.g = conv(ci), conv(ci), conv(ci)
        if self.mode == "concatenation":
            self.concat_project = conv(1, use_bias=False)
        self.out_proj = conv(self.channels, zero=not self.use_bn)
        if self.use_bn:
            self.out_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                                       param_dtype=self.param_dtype,
                                       scale_init=nn.initializers.zeros)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: BatchNorm batch statistics. Returns (N, H, W, C)."""
        check_nhwc("NonLocal", "x", x, self.channels)
        if self.use_bn:
            out = lambda y: self.out_bn(self.out_proj(y), use_running_average=not train)
        else:
            out = self.out_proj
        return F.non_local(x, theta=self.theta, phi=self.phi, g=self.g, out=out,
                           concat_project=getattr(self, "concat_project", None),
                           mode=self.mode, use_scale=self.use_scale,
                           sub_sample=self.sub_sample, implementation=self.implementation,
                           precision=self.precision)


class PositionAttention(nn.Module):
    """DANet position attention module, PAM (Fu et al., CVPR 2019), linen.

    Input (N, H, W, C) -> output (N, H, W, C). Parameters: ``query``, ``key`` (1x1 conv
    C -> Cq, Cq = ``qk_channels`` or C // 8 as the official code), ``value`` (1x1 conv C -> C)
    and ``gamma`` (shape (1,), initialised to 0, so the module starts as the identity).
    """

    channels: int
    qk_channels: int | None = None
    implementation: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        cq = _width("PositionAttention", self.channels, self.qk_channels, 8)
        conv = partial(_conv1x1, dtype=self.dtype, param_dtype=self.param_dtype,
                       precision=self.precision)
        self.query, self.key, self.value = conv(cq), conv(cq), conv(self.channels)
        self.gamma = self.param("gamma", nn.initializers.zeros, (1,), self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns (N, H, W, C)."""
        check_nhwc("PositionAttention", "x", x, self.channels)
        return F.position_attention(x, query=self.query, key=self.key, value=self.value,
                                    gamma=self.gamma, implementation=self.implementation,
                                    precision=self.precision)


class ChannelSelfAttention(nn.Module):
    """DANet channel attention module, CAM (Fu et al., CVPR 2019), linen.

    Input (N, H, W, C) -> output (N, H, W, C). One parameter: ``gamma`` (shape (1,),
    initialised to 0). Softmax over ``rowmax(E) - E`` with E = X X^T, as the official code
    (see ``functional.channel_self_attention``).
    """

    channels: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        check_positive_int("ChannelSelfAttention", "channels", self.channels)
        self.gamma = self.param("gamma", nn.initializers.zeros, (1,), self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns (N, H, W, C)."""
        check_nhwc("ChannelSelfAttention", "x", x, self.channels)
        return F.channel_self_attention(x, gamma=self.gamma)


class DualAttentionHead(nn.Module):
    """DANet head (Fu et al., CVPR 2019): PAM and CAM branches, summed and fused; linen.

    Input (N, H, W, C) -> output (N, H, W, out_channels or C). Parameters: ``conv5a``,
    ``conv5c`` (3x3 conv-BN-ReLU C -> Ci, Ci = C // 4), ``sa`` (PAM on Ci), ``sc`` (CAM on Ci),
    ``conv51``, ``conv52`` (3x3 conv-BN-ReLU Ci -> Ci) and ``conv8`` (1x1 conv Ci -> out, with
    bias), as the official ``DANetHead``. ``out_channels`` defaults to C so the head is
    shape-preserving (the paper maps to the number of classes); the official per-branch
    auxiliary outputs (``conv6``/``conv7``, deep supervision) and the dropout before ``conv8``
    (training only) are left out.
    """

    channels: int
    out_channels: int | None = None
    implementation: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        check_positive_int("DualAttentionHead", "channels", self.channels)
        if self.out_channels is not None:
            check_positive_int("DualAttentionHead", "out_channels", self.out_channels)
        ci = max(1, self.channels // 4)
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype, "precision": self.precision}
        cba = partial(ConvBNAct, ci, kernel_size=3, **kw)
        self.conv5a, self.conv5c, self.conv51, self.conv52 = cba(), cba(), cba(), cba()
        self.sa = PositionAttention(ci, implementation=self.implementation, **kw)
        self.sc = ChannelSelfAttention(ci, **kw)
        self.conv8 = _conv1x1(self.out_channels or self.channels, **kw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: BatchNorm batch statistics. Returns (N, H, W, Co)."""
        check_nhwc("DualAttentionHead", "x", x, self.channels)
        c = lambda m: partial(m, train=train)
        return F.dual_attention_head(x, conv5a=c(self.conv5a), conv5c=c(self.conv5c),
                                     pam=self.sa, cam=self.sc, conv51=c(self.conv51),
                                     conv52=c(self.conv52), conv8=self.conv8)


class CrissCrossAttention(nn.Module):
    """Recurrent criss-cross attention, RCCA (Huang et al., ICCV 2019), linen.

    Input (N, H, W, C) -> output (N, H, W, C). Parameters: ``query``, ``key`` (1x1 conv
    C -> Cq, Cq = ``qk_channels`` or C // 8), ``value`` (1x1 conv C -> C), ``gamma`` ((1,),
    initialised to 0); the same weights are applied ``recurrence`` times (R = 2).
    """

    channels: int
    qk_channels: int | None = None
    recurrence: int = 2
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        cq = _width("CrissCrossAttention", self.channels, self.qk_channels, 8)
        check_positive_int("CrissCrossAttention", "recurrence", self.recurrence)
        conv = partial(_conv1x1, dtype=self.dtype, param_dtype=self.param_dtype,
                       precision=self.precision)
        self.query, self.key, self.value = conv(cq), conv(cq), conv(self.channels)
        self.gamma = self.param("gamma", nn.initializers.zeros, (1,), self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns (N, H, W, C)."""
        check_nhwc("CrissCrossAttention", "x", x, self.channels)
        return F.criss_cross_attention(x, query=self.query, key=self.key, value=self.value,
                                       gamma=self.gamma, recurrence=self.recurrence,
                                       precision=self.precision)


class MultiHeadSelfAttention2d(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, linen.

    Input (N, H, W, C) -> output (N, H, W, C) (no residual inside: use it where a conv would
    go, as BoTNet). Parameters: ``qkv`` (Dense C -> 3C, channels ordered (3, heads, head_dim)),
    ``proj`` (Dense C -> C), and with ``position="relative"`` the Swin-style
    ``relative_position_bias_table`` ((2H-1)(2W-1), heads), or with ``position="absolute"``
    ``pos_embed`` (1, H, W, C), both for a fixed ``input_size=(H, W)``.
    """

    channels: int
    num_heads: int = 8
    qkv_bias: bool = True
    position: str = "none"
    input_size: tuple[int, int] | None = None
    implementation: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        _check_mhsa("MultiHeadSelfAttention2d", self.channels, self.num_heads, self.position,
                    self.input_size)
        dense = partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision)
        self.qkv = dense(3 * self.channels, use_bias=self.qkv_bias)
        self.proj = dense(self.channels)
        init = nn.initializers.truncated_normal(0.02)
        if self.position == "relative":
            h, w = self.input_size
            self.relative_position_bias_table = self.param(
                "relative_position_bias_table", init,
                ((2 * h - 1) * (2 * w - 1), self.num_heads), self.param_dtype)
        elif self.position == "absolute":
            h, w = self.input_size
            self.pos_embed = self.param("pos_embed", init, (1, h, w, self.channels),
                                        self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (N, H, W, C); train: unused. Returns (N, H, W, C)."""
        fn = "MultiHeadSelfAttention2d"
        check_nhwc(fn, "x", x, self.channels)
        _check_size(fn, x, self.position, self.input_size)
        return F.multi_head_self_attention_2d(
            x, qkv=self.qkv, proj=self.proj, num_heads=self.num_heads,
            pos_embed=self.pos_embed if self.position == "absolute" else None,
            rel_pos_table=(self.relative_position_bias_table if self.position == "relative"
                           else None),
            implementation=self.implementation, precision=self.precision)
