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
from attention_jax._validation import check_feature_map
from attention_jax.functional._batch import keep_leading
from attention_jax.nnx._maps import call_and_sow
from attention_jax.nnx.context import ConvBNAct
from attention_jax.nnx.layers import batch_norm, conv
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


def _conv1x1(cin, cout, *, use_bias=True, zero=False, dtype, param_dtype, precision, rngs):
    kw = ({"kernel_init": nnx.initializers.zeros, "bias_init": nnx.initializers.zeros}
          if zero else {})
    return conv(cin, cout, 1, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                precision=precision, rngs=rngs, **kw)


class NonLocal(nnx.Module):
    """Non-local block (Wang et al., CVPR 2018), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Same parameters and options as the linen
    module: ``theta``, ``phi``, ``g``, ``concat_project`` (concatenation mode), ``out_proj``,
    ``out_bn`` (with ``use_bn``; scale initialised to 0 so the block starts as the identity).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``attention``
    (N, H * W, Nk): row ``i * W + j`` holds pixel (i, j)'s pairwise weights over the Nk key
    pixels (Nk = H * W, or (H // 2) * (W // 2) with ``sub_sample``), softmax rows summing to 1
    for ``"embedded_gaussian"``.

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics; with
    ``use_bn`` only). A new module is in training mode (batch statistics, running ones updated
    in place); ``module.eval()`` switches to the running statistics, ``module.train()`` back.
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
        p = self.plan = NonLocalPlan.create(
            channels, inter_channels=inter_channels, mode=mode, use_scale=use_scale,
            sub_sample=sub_sample, use_bn=use_bn, implementation=implementation)
        conv1x1 = partial(_conv1x1, dtype=dtype, param_dtype=param_dtype, precision=precision,
                          rngs=rngs)
        c, ci = p.channels, p.inter_channels
        self.precision = precision
        self.theta, self.phi, self.g = conv1x1(c, ci), conv1x1(c, ci), conv1x1(c, ci)
        self.concat_project = conv1x1(2 * ci, 1, use_bias=False) if p.has_concat_project else None
        self.out_proj = conv1x1(ci, c, zero=not p.use_bn)
        self.out_bn = (batch_norm(c, dtype=dtype, param_dtype=param_dtype,
                                  scale_init=nnx.initializers.zeros, rngs=rngs)
                       if p.use_bn else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("NonLocal", "x", x, p.channels)
        p.check_input(x)
        return call_and_sow(
            self, F.non_local, x, theta=self.theta, phi=self.phi, g=self.g,
            out=partial(F.conv_norm_act, conv=self.out_proj, norm=self.out_bn, act="identity"),
            concat_project=self.concat_project, mode=p.mode, use_scale=p.use_scale,
            sub_sample=p.sub_sample, implementation=p.implementation, precision=self.precision,
        )


class PositionAttention(nnx.Module):
    """DANet position attention module, PAM (Fu et al., CVPR 2019), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Parameters ``query``, ``key``, ``value``,
    ``gamma`` ((1,), initialised to 0), as the linen module.

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``attention``
    (N, H * W, H * W): row ``i * W + j`` is pixel (i, j)'s softmax over all pixels (row-major),
    summing to 1.

    Variables: ``nnx.Param`` only (no batch statistics; ``train()``/``eval()`` change nothing).
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
        p = self.plan = PositionAttentionPlan.create(channels, qk_channels=qk_channels,
                                                     implementation=implementation)
        conv1x1 = partial(_conv1x1, dtype=dtype, param_dtype=param_dtype, precision=precision,
                          rngs=rngs)
        c, cq = p.channels, p.qk_channels
        self.precision = precision
        self.query, self.key, self.value = conv1x1(c, cq), conv1x1(c, cq), conv1x1(c, c)
        self.gamma = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("PositionAttention", "x", x, p.channels)
        return call_and_sow(
            self, F.position_attention, x, query=self.query, key=self.key, value=self.value,
            gamma=self.gamma[...], implementation=p.implementation, precision=self.precision,
        )


class ChannelSelfAttention(nnx.Module):
    """DANet channel attention module, CAM (Fu et al., CVPR 2019), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). One parameter: ``gamma`` ((1,), initialised
    to 0). The official code's ``rowmax(E) - E`` energy (see the functional docstring).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``attention``
    (N, C, C): row c is channel c's softmax over the channels, summing to 1.

    Variables: ``nnx.Param`` only (no batch statistics; ``train()``/``eval()`` change nothing).
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
        self.plan = ChannelSelfAttentionPlan.create(channels)
        self.gamma = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        check_feature_map("ChannelSelfAttention", "x", x, self.plan.channels)
        return call_and_sow(self, F.channel_self_attention, x, gamma=self.gamma[...])


class DualAttentionHead(nnx.Module):
    """DANet head (Fu et al., CVPR 2019): PAM and CAM branches, summed and fused; nnx.

    Input (..., H, W, C) -> output (..., H, W, out_channels or C). Same parameters as the linen
    module: ``conv5a``, ``conv5c``, ``sa``, ``sc``, ``conv51``, ``conv52``, ``conv8``.

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): none of its own; its
    PAM ``sa`` sows ``attention`` (N, H * W, H * W) and its CAM ``sc`` sows ``attention``
    (N, Ci, Ci), found at ``maps["sa"]["attention"]`` and ``maps["sc"]["attention"]``.

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics). A new module
    is in training mode (batch statistics, running ones updated in place); ``module.eval()``
    switches to the running statistics, ``module.train()`` back.
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
        p = self.plan = DualAttentionHeadPlan.create(channels, out_channels=out_channels,
                                                     implementation=implementation)
        c, ci = p.channels, p.inter_channels
        kw = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision, "rngs": rngs}
        self.conv5a = ConvBNAct(c, ci, kernel_size=3, **kw)
        self.conv5c = ConvBNAct(c, ci, kernel_size=3, **kw)
        self.sa = PositionAttention(ci, implementation=p.implementation, **kw)
        self.sc = ChannelSelfAttention(ci, **kw)
        self.conv51 = ConvBNAct(ci, ci, kernel_size=3, **kw)
        self.conv52 = ConvBNAct(ci, ci, kernel_size=3, **kw)
        self.conv8 = _conv1x1(ci, p.out_channels, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, Co)."""
        check_feature_map("DualAttentionHead", "x", x, self.plan.channels)
        lead = x.shape[:-3]  # PAM and CAM sow their maps with the caller's leading dims
        return F.dual_attention_head(x, conv5a=self.conv5a, conv5c=self.conv5c,
                                     pam=keep_leading(self.sa, lead),
                                     cam=keep_leading(self.sc, lead), conv51=self.conv51,
                                     conv52=self.conv52, conv8=self.conv8)


class CrissCrossAttention(nnx.Module):
    """Recurrent criss-cross attention, RCCA (Huang et al., ICCV 2019), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Parameters ``query``, ``key``, ``value``,
    ``gamma`` as the linen module; the same weights applied ``recurrence`` times.

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``attention``
    (N, R, H, W, H + W): pass r's softmax of pixel (i, j) over the H pixels of its column (index
    g: pixel (g, j); its own entry g = i is masked to 0), then the W pixels of its row (index H
    + v: pixel (i, v)); sums to 1 over the last axis.

    Variables: ``nnx.Param`` only (no batch statistics; ``train()``/``eval()`` change nothing).
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
        p = self.plan = CrissCrossAttentionPlan.create(channels, qk_channels=qk_channels,
                                                       recurrence=recurrence)
        conv1x1 = partial(_conv1x1, dtype=dtype, param_dtype=param_dtype, precision=precision,
                          rngs=rngs)
        c, cq = p.channels, p.qk_channels
        self.precision = precision
        self.query, self.key, self.value = conv1x1(c, cq), conv1x1(c, cq), conv1x1(c, c)
        self.gamma = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("CrissCrossAttention", "x", x, p.channels)
        return call_and_sow(
            self, F.criss_cross_attention, x, query=self.query, key=self.key, value=self.value,
            gamma=self.gamma[...], recurrence=p.recurrence, precision=self.precision,
        )


class MultiHeadSelfAttention2d(nnx.Module):
    """Multi-head self-attention over the pixels of a feature map, nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Same parameters and options as the linen
    module: ``qkv``, ``proj``, and ``relative_position_bias_table`` or ``pos_embed``.

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``attention``
    (N, heads, H * W, H * W): each head's softmax of query pixel ``i * W + j`` over all pixels
    (row-major), summing to 1.

    Variables: ``nnx.Param`` only (no batch statistics; ``train()``/``eval()`` change nothing).
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
        p = self.plan = MultiHeadSelfAttention2dPlan.create(
            channels, num_heads=num_heads, qkv_bias=qkv_bias, position=position,
            input_size=input_size, implementation=implementation)
        lin = partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, precision=precision,
                      rngs=rngs)
        self.precision = precision
        self.qkv = lin(p.channels, 3 * p.channels, use_bias=p.qkv_bias)
        self.proj = lin(p.channels, p.channels)
        init = nnx.initializers.truncated_normal(0.02)
        if p.position == "relative":
            self.relative_position_bias_table = nnx.Param(
                init(rngs.params(), p.rel_table_shape, param_dtype))
        elif p.position == "absolute":
            self.pos_embed = nnx.Param(init(rngs.params(), p.pos_embed_shape, param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("MultiHeadSelfAttention2d", "x", x, p.channels)
        p.check_input(x)
        table = getattr(self, "relative_position_bias_table", None)
        pos = getattr(self, "pos_embed", None)
        return call_and_sow(
            self, F.multi_head_self_attention_2d, x, qkv=self.qkv, proj=self.proj,
            num_heads=p.num_heads, pos_embed=None if pos is None else pos[...],
            rel_pos_table=None if table is None else table[...], implementation=p.implementation,
            precision=self.precision,
        )
