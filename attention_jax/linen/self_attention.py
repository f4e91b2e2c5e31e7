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
from attention_jax._validation import check_feature_map
from attention_jax.functional._batch import keep_leading
from attention_jax.linen._maps import call_and_sow
from attention_jax.linen.context import ConvBNAct
from attention_jax.linen.layers import batch_norm, conv
from attention_jax.plans import (
    ChannelSelfAttentionPlan,
    CrissCrossAttentionPlan,
    DualAttentionHeadPlan,
    MultiHeadSelfAttention2dPlan,
    NonLocalPlan,
    PositionAttentionPlan,
)

__all__ = [
    "NonLocal",
    "PositionAttention",
    "ChannelSelfAttention",
    "DualAttentionHead",
    "CrissCrossAttention",
    "MultiHeadSelfAttention2d",
]


def _conv1x1(features, *, use_bias=True, zero=False, dtype, param_dtype, precision):
    kw = {"kernel_init": nn.initializers.zeros, "bias_init": nn.initializers.zeros} if zero else {}
    return conv(features, 1, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                precision=precision, **kw)


class NonLocal(nn.Module):
    """Non-local block (Wang et al., CVPR 2018), linen.

    Input (..., H, W, C) -> output (..., H, W, C). Parameters: ``theta``, ``phi``, ``g`` (1x1 conv
    C -> Ci, Ci = ``inter_channels`` or C // 2), ``concat_project`` (``mode="concatenation"``
    only: 1x1 conv 2Ci -> 1, no bias), ``out_proj`` (1x1 conv Ci -> C) and, with ``use_bn``,
    ``out_bn`` (BatchNorm). The block starts as the identity: ``out_bn``'s scale is initialised
    to zero (or, without BN, ``out_proj``'s weights and bias), as the official code.
    ``mode`` is ``"embedded_gaussian"``, ``"dot_product"`` or ``"concatenation"``;
    ``use_scale`` divides embedded-Gaussian logits by sqrt(Ci) (official code, mmcv);
    ``sub_sample`` max-pools keys and values 2x2.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``attention`` (N, H * W, Nk): row ``i * W + j`` holds pixel (i, j)'s pairwise weights over
    the Nk key pixels (Nk = H * W, or (H // 2) * (W // 2) with ``sub_sample``), softmax rows
    summing to 1 for ``"embedded_gaussian"``.

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics; with ``use_bn``
    only). ``train=False`` (default) normalises with the running statistics; ``train=True`` with
    the batch's, updating the running ones: ``apply(v, x, train=True,
    mutable=["batch_stats"])``.
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
        p = self.plan = NonLocalPlan.create(
            self.channels, inter_channels=self.inter_channels, mode=self.mode,
            use_scale=self.use_scale, sub_sample=self.sub_sample, use_bn=self.use_bn,
            implementation=self.implementation)
        conv1x1 = partial(_conv1x1, dtype=self.dtype, param_dtype=self.param_dtype,
                          precision=self.precision)
        ci = p.inter_channels
        self.theta, self.phi, self.g = conv1x1(ci), conv1x1(ci), conv1x1(ci)
        if p.has_concat_project:
            self.concat_project = conv1x1(1, use_bias=False)
        self.out_proj = conv1x1(p.channels, zero=not p.use_bn)
        if p.use_bn:
            self.out_bn = batch_norm(dtype=self.dtype, param_dtype=self.param_dtype,
                                     scale_init=nn.initializers.zeros)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: BatchNorm batch statistics. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("NonLocal", "x", x, p.channels)
        p.check_input(x)
        norm = partial(self.out_bn, use_running_average=not train) if p.use_bn else None
        return call_and_sow(
            self, F.non_local, x, theta=self.theta, phi=self.phi, g=self.g,
            out=partial(F.conv_norm_act, conv=self.out_proj, norm=norm, act="identity"),
            concat_project=self.concat_project if p.has_concat_project else None, mode=p.mode,
            use_scale=p.use_scale, sub_sample=p.sub_sample, implementation=p.implementation,
            precision=self.precision,
        )


class PositionAttention(nn.Module):
    """DANet position attention module, PAM (Fu et al., CVPR 2019), linen.

    Input (..., H, W, C) -> output (..., H, W, C). Parameters: ``query``, ``key`` (1x1 conv
    C -> Cq, Cq = ``qk_channels`` or C // 8 as the official code), ``value`` (1x1 conv C -> C)
    and ``gamma`` (shape (1,), initialised to 0, so the module starts as the identity).

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``attention`` (N, H * W, H * W): row ``i * W + j`` is pixel (i, j)'s softmax over all pixels
    (row-major), summing to 1.

    Variables: ``params`` only (no batch statistics; ``train`` is accepted and changes nothing).
    """

    channels: int
    qk_channels: int | None = None
    implementation: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = PositionAttentionPlan.create(
            self.channels, qk_channels=self.qk_channels, implementation=self.implementation)
        conv1x1 = partial(_conv1x1, dtype=self.dtype, param_dtype=self.param_dtype,
                          precision=self.precision)
        self.query, self.key = conv1x1(p.qk_channels), conv1x1(p.qk_channels)
        self.value = conv1x1(p.channels)
        self.gamma = self.param("gamma", nn.initializers.zeros, (1,), self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: unused. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("PositionAttention", "x", x, p.channels)
        return call_and_sow(
            self, F.position_attention, x, query=self.query, key=self.key, value=self.value,
            gamma=self.gamma, implementation=p.implementation, precision=self.precision,
        )


class ChannelSelfAttention(nn.Module):
    """DANet channel attention module, CAM (Fu et al., CVPR 2019), linen.

    Input (..., H, W, C) -> output (..., H, W, C). One parameter: ``gamma`` (shape (1,),
    initialised to 0). Softmax over ``rowmax(E) - E`` with E = X X^T, as the official code
    (see ``functional.channel_self_attention``).

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``attention`` (N, C, C): row c is channel c's softmax over the channels, summing to 1.

    Variables: ``params`` only (no batch statistics; ``train`` is accepted and changes nothing).
    """

    channels: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        self.plan = ChannelSelfAttentionPlan.create(self.channels)
        self.gamma = self.param("gamma", nn.initializers.zeros, (1,), self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: unused. Returns (..., H, W, C)."""
        check_feature_map("ChannelSelfAttention", "x", x, self.plan.channels)
        return call_and_sow(self, F.channel_self_attention, x, gamma=self.gamma)


class DualAttentionHead(nn.Module):
    """DANet head (Fu et al., CVPR 2019): PAM and CAM branches, summed and fused; linen.

    Input (..., H, W, C) -> output (..., H, W, out_channels or C). Parameters: ``conv5a``,
    ``conv5c`` (3x3 conv-BN-ReLU C -> Ci, Ci = C // 4), ``sa`` (PAM on Ci), ``sc`` (CAM on Ci),
    ``conv51``, ``conv52`` (3x3 conv-BN-ReLU Ci -> Ci) and ``conv8`` (1x1 conv Ci -> out, with
    bias), as the official ``DANetHead``. ``out_channels`` defaults to C so the head is
    shape-preserving (the paper maps to the number of classes); the official per-branch
    auxiliary outputs (``conv6``/``conv7``, deep supervision) and the dropout before ``conv8``
    (training only) are left out.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same): none
    of its own; its PAM ``sa`` sows ``attention`` (N, H * W, H * W) and its CAM ``sc`` sows
    ``attention`` (N, Ci, Ci), found at ``maps["sa"]["attention"]`` and
    ``maps["sc"]["attention"]``.

    Variables: ``params`` and ``batch_stats`` (BatchNorm running statistics). ``train=False``
    (default) normalises with the running statistics; ``train=True`` with the batch's, updating
    the running ones: ``apply(v, x, train=True, mutable=["batch_stats"])``.
    """

    channels: int
    out_channels: int | None = None
    implementation: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = DualAttentionHeadPlan.create(
            self.channels, out_channels=self.out_channels, implementation=self.implementation)
        ci = p.inter_channels
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype, "precision": self.precision}
        cba = partial(ConvBNAct, ci, kernel_size=3, **kw)
        self.conv5a, self.conv5c, self.conv51, self.conv52 = cba(), cba(), cba(), cba()
        self.sa = PositionAttention(ci, implementation=p.implementation, **kw)
        self.sc = ChannelSelfAttention(ci, **kw)
        self.conv8 = _conv1x1(p.out_channels, **kw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: BatchNorm batch statistics. Returns (..., H, W, Co)."""
        check_feature_map("DualAttentionHead", "x", x, self.plan.channels)
        c = lambda m: partial(m, train=train)
        lead = x.shape[:-3]  # PAM and CAM sow their maps with the caller's leading dims
        return F.dual_attention_head(x, conv5a=c(self.conv5a), conv5c=c(self.conv5c),
                                     pam=keep_leading(self.sa, lead),
                                     cam=keep_leading(self.sc, lead), conv51=c(self.conv51),
                                     conv52=c(self.conv52), conv8=self.conv8)


class CrissCrossAttention(nn.Module):
    """Recurrent criss-cross attention, RCCA (Huang et al., ICCV 2019), linen.

    Input (..., H, W, C) -> output (..., H, W, C). Parameters: ``query``, ``key`` (1x1 conv
    C -> Cq, Cq = ``qk_channels`` or C // 8), ``value`` (1x1 conv C -> C), ``gamma`` ((1,),
    initialised to 0); the same weights are applied ``recurrence`` times (R = 2).

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``attention`` (N, R, H, W, H + W): pass r's softmax of pixel (i, j) over the H pixels of its
    column (index g: pixel (g, j); its own entry g = i is masked to 0), then the W pixels of its
    row (index H + v: pixel (i, v)); sums to 1 over the last axis.

    Variables: ``params`` only (no batch statistics; ``train`` is accepted and changes nothing).
    """

    channels: int
    qk_channels: int | None = None
    recurrence: int = 2
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None

    def setup(self) -> None:
        p = self.plan = CrissCrossAttentionPlan.create(
            self.channels, qk_channels=self.qk_channels, recurrence=self.recurrence)
        conv1x1 = partial(_conv1x1, dtype=self.dtype, param_dtype=self.param_dtype,
                          precision=self.precision)
        self.query, self.key = conv1x1(p.qk_channels), conv1x1(p.qk_channels)
        self.value = conv1x1(p.channels)
        self.gamma = self.param("gamma", nn.initializers.zeros, (1,), self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: unused. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("CrissCrossAttention", "x", x, p.channels)
        return call_and_sow(
            self, F.criss_cross_attention, x, query=self.query, key=self.key, value=self.value,
            gamma=self.gamma, recurrence=p.recurrence, precision=self.precision,
        )


class MultiHeadSelfAttention2d(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, linen.

    Input (..., H, W, C) -> output (..., H, W, C) (no residual inside: use it where a conv would
    go, as BoTNet). Parameters: ``qkv`` (Dense C -> 3C, channels ordered (3, heads, head_dim)),
    ``proj`` (Dense C -> C), and with ``position="relative"`` the Swin-style
    ``relative_position_bias_table`` ((2H-1)(2W-1), heads), or with ``position="absolute"``
    ``pos_embed`` (1, H, W, C), both for a fixed ``input_size=(H, W)``.

    Attention maps (sown into ``"intermediates"`` only when the caller collects that collection,
    e.g. ``attention_jax.intermediates(module, x, variables=v)``; the output is the same):
    ``attention`` (N, heads, H * W, H * W): each head's softmax of query pixel ``i * W + j``
    over all pixels (row-major), summing to 1.

    Variables: ``params`` only (no batch statistics; ``train`` is accepted and changes nothing).
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
        p = self.plan = MultiHeadSelfAttention2dPlan.create(
            self.channels, num_heads=self.num_heads, qkv_bias=self.qkv_bias,
            position=self.position, input_size=self.input_size,
            implementation=self.implementation)
        dense = partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision)
        self.qkv = dense(3 * p.channels, use_bias=p.qkv_bias)
        self.proj = dense(p.channels)
        init = nn.initializers.truncated_normal(0.02)
        if p.position == "relative":
            self.relative_position_bias_table = self.param(
                "relative_position_bias_table", init, p.rel_table_shape, self.param_dtype)
        elif p.position == "absolute":
            self.pos_embed = self.param("pos_embed", init, p.pos_embed_shape, self.param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Args: x (..., H, W, C); train: unused. Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("MultiHeadSelfAttention2d", "x", x, p.channels)
        p.check_input(x)
        return call_and_sow(
            self, F.multi_head_self_attention_2d, x, qkv=self.qkv, proj=self.proj,
            num_heads=p.num_heads, pos_embed=self.pos_embed if p.position == "absolute" else None,
            rel_pos_table=(self.relative_position_bias_table if p.position == "relative" else None),
            implementation=p.implementation, precision=self.precision,
        )
