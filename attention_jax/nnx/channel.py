"""Channel attention as Flax nnx modules (thin wrappers over ``attention_jax.functional``)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import functional as F
from attention_jax._types import Activation, Dtype, PrecisionLike
from attention_jax._validation import check_feature_map
from attention_jax.nnx._maps import call_and_sow
from attention_jax.nnx.layers import batch_norm, conv
from attention_jax.plans import (
    EfficientChannelAttentionPlan,
    GatherExcitePlan,
    GlobalContextPlan,
    SecondOrderChannelPlan,
    SqueezeExcitePlan,
)

__all__ = [
    "SqueezeExcite",
    "EfficientChannelAttention",
    "GatherExcite",
    "GlobalContext",
    "SecondOrderChannel",
]

class SqueezeExcite(nnx.Module):
    """Squeeze-and-excitation block (Hu et al., CVPR 2018), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Same parameters as the linen module: ``fc1``
    (1x1 conv C -> R) and ``fc2`` (1x1 conv R -> C).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``channel_weights``
    (N, 1, 1, C), the gate that multiplies ``x``.

    Variables: ``nnx.Param`` only (no batch statistics; ``train()``/``eval()`` change nothing).
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        add_maxpool: bool = False,
        bias: bool = True,
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        p = self.plan = SqueezeExcitePlan.create(
            channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
            add_maxpool=add_maxpool, bias=bias, act=act, gate=gate)
        conv1x1 = partial(conv, kernel_size=1, use_bias=p.bias, dtype=dtype,
                          param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.fc1 = conv1x1(p.channels, p.rd_channels)
        self.fc2 = conv1x1(p.rd_channels, p.channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("SqueezeExcite", "x", x, p.channels)
        return call_and_sow(
            self, F.squeeze_excite, x, reduce=self.fc1, expand=self.fc2, act=p.act, gate=p.gate,
            add_maxpool=p.add_maxpool,
        )


class EfficientChannelAttention(nnx.Module):
    """Efficient channel attention (ECA-Net, Wang et al., CVPR 2020), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Same parameter as the linen module: ``conv``
    (1D conv over channels, kernel (k, 1, 1), no bias).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``channel_weights``
    (N, 1, 1, C), the gate that multiplies ``x``.

    Variables: ``nnx.Param`` only (no batch statistics; ``train()``/``eval()`` change nothing).
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2.0,
        beta: float = 1.0,
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        p = self.plan = EfficientChannelAttentionPlan.create(
            channels, kernel_size=kernel_size, gamma=gamma, beta=beta, gate=gate)
        self.conv = conv(1, 1, (p.kernel_size,), padding=p.padding, use_bias=False,
                         dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("EfficientChannelAttention", "x", x, p.channels)
        return call_and_sow(self, F.efficient_channel_attention, x, conv=self.conv, gate=p.gate)


class GatherExcite(nnx.Module):
    """Gather-excite (Hu et al., NeurIPS 2018), nnx, as timm's ``GatherExcite``.

    Input (..., H, W, C) -> output (..., H, W, C). Same parameters as the linen module: gather
    ``conv1..convK``/``norm1..normK`` when ``extra_params``, MLP ``fc1``/``fc2`` when ``use_mlp``.

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``channel_weights``
    (N, h, w, C), the gate at the gathered resolution ((1, 1) for ``extent=0``, else
    (ceil(H / extent), ceil(W / extent))), which is nearest-resized to (H, W) and multiplies
    ``x``.

    Variables: ``nnx.Param`` and ``nnx.BatchStat`` (BatchNorm running statistics; with
    ``extra_params`` only). A new module is in training mode (batch statistics, running ones
    updated in place); ``module.eval()`` switches to the running statistics, ``module.train()``
    back.
    """

    def __init__(
        self,
        channels: int,
        *,
        extent: int = 0,
        extra_params: bool = False,
        feat_size: int | tuple[int, int] | None = None,
        use_mlp: bool = True,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        p = self.plan = GatherExcitePlan.create(
            channels, extent=extent, extra_params=extra_params, feat_size=feat_size,
            use_mlp=use_mlp, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
            act=act, gate=gate)
        c, common = p.channels, dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for i, g in enumerate(p.gather_convs, start=1):
            setattr(self, f"conv{i}", conv(c, c, g.kernel_size, strides=g.stride,
                                           padding=g.padding, feature_group_count=c,
                                           use_bias=False, precision=precision, **common))
            setattr(self, f"norm{i}", batch_norm(c, **common))
        if p.use_mlp:
            self.fc1 = conv(c, p.rd_channels, 1, precision=precision, **common)
            self.fc2 = conv(p.rd_channels, c, 1, precision=precision, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("GatherExcite", "x", x, p.channels)
        idx = range(1, len(p.gather_convs) + 1)
        gather = partial(
            F.ge_gather, convs=[getattr(self, f"conv{i}") for i in idx],
            norms=[getattr(self, f"norm{i}") for i in idx], act=p.act,
        ) if p.gather_convs else None
        return call_and_sow(
            self, F.gather_excite, x, extent=p.extent, gather=gather,
            reduce=self.fc1 if p.use_mlp else None, expand=self.fc2 if p.use_mlp else None,
            act=p.act, gate=p.gate,
        )


class GlobalContext(nnx.Module):
    """Global context block (GCNet, Cao et al., ICCVW 2019), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Same fields and parameters as the linen module:
    ``conv_attn`` (with a bias if ``attn_bias``); ``add_fc1``/``add_norm``/``add_fc2`` and/or
    ``scale_fc1``/``scale_norm``/``scale_fc2``; ``eps`` is the LayerNorm epsilon.

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``context_weights``
    (N, H, W, 1), the attention-pooling softmax over the H * W positions (sums to 1); with
    ``fuse_add`` ``channel_add`` (N, 1, 1, C), the term added to ``x``; with ``fuse_scale``
    ``channel_weights`` (N, 1, 1, C), the gate that multiplies ``x``.

    Variables: ``nnx.Param`` only (no batch statistics; ``train()``/``eval()`` change nothing).
    """

    def __init__(
        self,
        channels: int,
        *,
        fuse_add: bool = True,
        fuse_scale: bool = False,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        eps: float = 1e-5,
        attn_bias: bool = False,
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        p = self.plan = GlobalContextPlan.create(
            channels, fuse_add=fuse_add, fuse_scale=fuse_scale, rd_ratio=rd_ratio,
            rd_channels=rd_channels, rd_divisor=rd_divisor, eps=eps, attn_bias=attn_bias,
            act=act, gate=gate)
        c, rd = p.channels, p.rd_channels
        conv1x1 = partial(conv, kernel_size=1, dtype=dtype, param_dtype=param_dtype,
                          precision=precision, rngs=rngs)
        norm = partial(nnx.LayerNorm, rd, epsilon=p.eps, use_fast_variance=False, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)
        # A bias is a constant logit: it cancels in the softmax over H*W (zero gradient).
        self.conv_attn = conv1x1(c, 1, use_bias=p.attn_bias)
        if p.fuse_add:
            self.add_fc1, self.add_norm, self.add_fc2 = conv1x1(c, rd), norm(), conv1x1(rd, c)
        if p.fuse_scale:
            self.scale_fc1, self.scale_norm = conv1x1(c, rd), norm()
            self.scale_fc2 = conv1x1(rd, c)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("GlobalContext", "x", x, p.channels)
        add = (self.add_fc1, self.add_norm, self.add_fc2) if p.fuse_add else None
        scale = (self.scale_fc1, self.scale_norm, self.scale_fc2) if p.fuse_scale else None
        return call_and_sow(
            self, F.global_context, x, attn=self.conv_attn, add_transform=add,
            scale_transform=scale, act=p.act, gate=p.gate,
        )


class SecondOrderChannel(nnx.Module):
    """Second-order channel attention (SOCA, Dai et al., CVPR 2019), nnx.

    Input (..., H, W, C) -> output (..., H, W, C). Same parameters as the linen module: ``fc1``
    (1x1 conv C -> R, bias) and ``fc2`` (1x1 conv R -> C, bias).

    Attention maps (sown as ``nnx.Intermediate`` only under ``nnx.capture``, e.g.
    ``attention_jax.intermediates(module, x)``; the output is the same): ``channel_weights``
    (N, 1, 1, C), the gate that multiplies ``x``.

    Variables: ``nnx.Param`` only (no batch statistics; ``train()``/``eval()`` change nothing).
    """

    def __init__(
        self,
        channels: int,
        *,
        iterations: int = 5,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act: Activation = "relu",
        gate: Activation = "sigmoid",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ) -> None:
        p = self.plan = SecondOrderChannelPlan.create(
            channels, iterations=iterations, rd_ratio=rd_ratio, rd_channels=rd_channels,
            rd_divisor=rd_divisor, act=act, gate=gate)
        conv1x1 = partial(conv, kernel_size=1, dtype=dtype, param_dtype=param_dtype,
                          precision=precision, rngs=rngs)
        self.fc1 = conv1x1(p.channels, p.rd_channels)
        self.fc2 = conv1x1(p.rd_channels, p.channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., H, W, C). Returns (..., H, W, C)."""
        p = self.plan
        check_feature_map("SecondOrderChannel", "x", x, p.channels)
        return call_and_sow(
            self, F.second_order_channel, x, reduce=self.fc1, expand=self.fc2, act=p.act,
            gate=p.gate, iterations=p.iterations,
        )
