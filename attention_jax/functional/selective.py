"""Selective attention forwards (SK-Net, ResNeSt): attention across parallel branches.

Each function takes the feature map plus the learned layers as plain callables (any
``array -> array`` function: a Flax linen or nnx layer, or a closure over explicit weights), so
the linen and nnx modules share one forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from attention_jax._types import Layer
from attention_jax._validation import (
    check_array,
    check_nhwc,
    check_positive_int,
    fail,
)
from attention_jax.functional._batch import NHWC, batch_dims
from attention_jax.functional._numerics import acc_dtype
from attention_jax.functional.gating import _identity, branch_softmax, get_act
from attention_jax.functional.pooling import global_avg_pool

__all__ = ["radix_softmax", "selective_kernel", "split_attention"]


def _sum(parts: Sequence[jax.Array]) -> jax.Array:
    """Left-to-right sum of a short list of arrays (as ``jnp.sum`` over a new axis would)."""
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def radix_softmax(logits: jax.Array, *, radix: int, cardinality: int = 1) -> jax.Array:
    """ResNeSt's r-softmax: softmax across the radix splits within each cardinal group.

    Zhang et al., "ResNeSt: Split-Attention Networks", 2020 (official ``rSoftMax``). The last
    axis of ``logits`` is laid out (cardinality, radix, C / cardinality), as the grouped ``fc2``
    produces it; the result is laid out (radix, C) so that ``out[..., r*C:(r+1)*C]`` weights
    split ``r``. With ``radix == 1`` it is a sigmoid (same layout).

    Args:
      logits: (..., radix * C) attention logits, C divisible by ``cardinality``.
      radix: number of splits R >= 1.
      cardinality: number of cardinal groups K >= 1.

    Returns:
      (..., radix * C) weights, dtype of ``logits``; for radix > 1 they sum to one over splits.
    """
    fn = "radix_softmax"
    check_array(fn, "logits", logits)
    check_positive_int(fn, "radix", radix)
    check_positive_int(fn, "cardinality", cardinality)
    if logits.ndim < 1 or logits.shape[-1] % (radix * cardinality) != 0:
        raise fail(fn, "logits", f"last axis divisible by radix * cardinality = "
                   f"{radix * cardinality}", f"shape {tuple(logits.shape)}")
    if radix == 1:
        return jax.nn.sigmoid(logits.astype(acc_dtype(logits))).astype(logits.dtype)
    lead, width = logits.shape[:-1], logits.shape[-1] // (radix * cardinality)
    z = logits.reshape(*lead, cardinality, radix, width)
    w = branch_softmax(z, axis=-2)
    return jnp.swapaxes(w, -3, -2).reshape(*lead, radix * cardinality * width)


@batch_dims(x=NHWC)
def selective_kernel(
    x: jax.Array,
    *,
    convs: Sequence[Layer],
    norms: Sequence[Layer] | None = None,
    reduce: Layer,
    reduce_norm: Layer | None = None,
    select: Layer,
    act: str | Layer = "relu",
    split_input: bool = False,
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Selective kernel: split into M branches, fuse by sum, select by softmax over branches.

    Li et al., "Selective Kernel Networks", CVPR 2019: ``U_m = act(norm_m(conv_m(x_m)))``;
    ``s = GAP(sum_m U_m)``; ``z = act(reduce_norm(reduce(s)))``; per-branch logits
    ``select(z)``; softmax across the M branches; output ``sum_m a_m * U_m``. Every branch sees
    the whole input (``x_m = x``, the paper), or with ``split_input`` branch m sees the m-th of
    M equal channel slices of ``x`` (timm's ``SelectiveKernel(split_input=True)``, used by its
    SK-ResNet-18/34).

    Args:
      x: (N, H, W, Cin) feature map (Cin divisible by M with ``split_input``).
      convs: M >= 1 layers, each (N, H, W, Cin) -> (N, H', W', C) (different receptive fields);
        (N, H, W, Cin / M) -> (N, H', W', C) with ``split_input``.
      norms: M layers applied after the convs (BatchNorm), or None.
      reduce: layer (N, 1, 1, C) -> (N, 1, 1, d) (the paper's fc to ``d = max(C/r, L)``).
      reduce_norm: layer on the (N, 1, 1, d) code (BatchNorm), or None.
      select: layer (N, 1, 1, d) -> (N, 1, 1, M * C), branch-major (the paper's A, B, ...).
      act: activation after each norm (name or callable).
      split_input: feed branch m the m-th channel slice of ``x`` instead of all of ``x``.
      return_maps: also return the attention map (see Returns).

    Returns:
      (N, H', W', C), dtype of ``x`` (layers may compute in a wider dtype); with
      ``return_maps`` a pair (output, maps) with ``"branch_weights"`` (N, M, C), the softmax
      over the M branches (sums to 1 over axis 1), in the layers' dtype.
    """
    fn = "selective_kernel"
    check_nhwc(fn, "x", x)
    convs = list(convs)
    if not convs:
        raise fail(fn, "convs", "a non-empty sequence of layers (M >= 1)", "an empty sequence")
    norms = [_identity] * len(convs) if norms is None else list(norms)
    if len(norms) != len(convs):
        raise fail(fn, "norms", f"{len(convs)} layers (one per conv)", f"{len(norms)}")
    act_fn = get_act(act)
    inputs = [x] * len(convs)
    if split_input:
        if x.shape[-1] % len(convs):
            raise fail(fn, "x", f"channels divisible by the number of branches M={len(convs)} "
                       f"(split_input)", f"shape {tuple(x.shape)}")
        inputs = jnp.split(x, len(convs), axis=-1)
    feats = [act_fn(n(c(xi))) for c, n, xi in zip(convs, norms, inputs, strict=True)]
    shapes = {f.shape for f in feats}
    if len(shapes) != 1:
        raise fail(fn, "convs", "layers with one output shape", sorted(shapes))
    u = feats[0]
    for f in feats[1:]:
        u = u + f
    s = global_avg_pool(u, keepdims=True)
    z = act_fn((reduce_norm or _identity)(reduce(s)))
    logits = select(z)
    m, c = len(feats), u.shape[-1]
    if logits.shape != (u.shape[0], 1, 1, m * c):
        raise fail(fn, "select", f"a layer returning shape {(u.shape[0], 1, 1, m * c)}",
                   f"shape {tuple(logits.shape)}")
    a = branch_softmax(logits.reshape(u.shape[0], m, c), axis=1)
    out = feats[0] * a[:, 0, None, None, :].astype(u.dtype)
    for i in range(1, m):
        out = out + feats[i] * a[:, i, None, None, :].astype(u.dtype)
    out = out.astype(x.dtype)
    return (out, {"branch_weights": a}) if return_maps else out


@batch_dims(x=NHWC)
def split_attention(
    x: jax.Array,
    *,
    conv: Layer,
    norm0: Layer | None = None,
    reduce: Layer,
    norm1: Layer | None = None,
    expand: Layer,
    radix: int = 2,
    cardinality: int = 1,
    act: str | Layer = "relu",
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """ResNeSt split attention: R splits from one grouped conv, r-softmax weights, weighted sum.

    Zhang et al., "ResNeSt: Split-Attention Networks", 2020 (official ``SplAtConv2d``):
    ``y = act(norm0(conv(x)))`` with R * C channels split radix-major into R maps; their sum is
    pooled, ``act(norm1(reduce(.)))`` then ``expand`` give R * C logits, ``radix_softmax``
    turns them into weights (sigmoid for R = 1), and the output is ``sum_r a_r * y_r``.

    Args:
      x: (N, H, W, Cin) feature map.
      conv: layer (N, H, W, Cin) -> (N, H', W', R * C) (grouped by cardinality * radix).
      norm0: layer on the conv output (BatchNorm), or None.
      reduce: layer (N, 1, 1, C) -> (N, 1, 1, d) (``fc1``, grouped by cardinality).
      norm1: layer on the (N, 1, 1, d) code (BatchNorm), or None.
      expand: layer (N, 1, 1, d) -> (N, 1, 1, R * C) (``fc2``, grouped by cardinality).
      radix: number of splits R >= 1.
      cardinality: number of cardinal groups K >= 1 (C divisible by K).
      act: activation (name or callable).
      return_maps: also return the attention map (see Returns).

    Returns:
      (N, H', W', C), dtype of ``x`` (layers may compute in a wider dtype); with
      ``return_maps`` a pair (output, maps) with ``"branch_weights"`` (N, R, C): split r's
      weights, the r-softmax over the R splits (sums to 1 over axis 1 for R > 1; a sigmoid
      for R = 1), in the layers' dtype.
    """
    fn = "split_attention"
    check_nhwc(fn, "x", x)
    check_positive_int(fn, "radix", radix)
    check_positive_int(fn, "cardinality", cardinality)
    act_fn = get_act(act)
    y = act_fn((norm0 or _identity)(conv(x)))
    if y.shape[-1] % (radix * cardinality) != 0:
        raise fail(fn, "conv", f"a layer whose output channels are divisible by radix * "
                   f"cardinality = {radix * cardinality}", f"shape {tuple(y.shape)}")
    n, h, w, rc = y.shape
    c = rc // radix
    # The R splits as R channel slices, summed by explicit adds: XLA:CPU hands a sum over a
    # small middle axis (jnp.sum(y.reshape(n, h, w, R, C), 3)) to YNNPACK's reduction, which
    # took 4x the grouped convolution itself; the adds fuse into one elementwise loop.
    splits = [y[..., r * c:(r + 1) * c] for r in range(radix)]
    gap = global_avg_pool(_sum(splits) if radix > 1 else y, keepdims=True)
    logits = expand(act_fn((norm1 or _identity)(reduce(gap))))
    if logits.shape != (n, 1, 1, rc):
        raise fail(fn, "expand", f"a layer returning shape {(n, 1, 1, rc)}",
                   f"shape {tuple(logits.shape)}")
    a = radix_softmax(logits, radix=radix, cardinality=cardinality).astype(y.dtype)
    if radix == 1:
        out = (y * a).astype(x.dtype)
    else:
        out = _sum([s * a[..., r * c:(r + 1) * c] for r, s in enumerate(splits)]).astype(x.dtype)
    return (out, {"branch_weights": a.reshape(n, radix, c)}) if return_maps else out
