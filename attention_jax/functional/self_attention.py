"""Self-attention over pixels (non-local, DANet, CCNet, multi-head): the forwards, written once.

Each function takes the NHWC feature map plus the learned layers as plain callables (a Flax
linen or nnx layer, or a closure over explicit weights) and scalar parameters as arrays, so the
linen and nnx modules share one forward. Softmax attention over all pixels goes through
``attention_jax.functional.scoring.attention``, which switches to the memory-efficient chunked
path for large maps (``implementation="auto"``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attention_jax._types import Layer
from attention_jax._validation import (
    check_array,
    check_choice,
    check_divides,
    check_nhwc,
    check_positive_int,
    fail,
    shape_of,
)
from attention_jax.functional._batch import NHWC, batch_dims
from attention_jax.functional._numerics import acc_dtype
from attention_jax.functional.pooling import _max_pool_2x2
from attention_jax.functional.scoring import _masked_exp, attention, attention_weights

__all__ = [
    "NON_LOCAL_MODES",
    "non_local",
    "position_attention",
    "channel_self_attention",
    "dual_attention_head",
    "criss_cross_attention",
    "relative_position_index",
    "relative_position_bias",
    "multi_head_self_attention_2d",
]


NON_LOCAL_MODES = ("embedded_gaussian", "dot_product", "concatenation")


def _tokens(a: jax.Array) -> jax.Array:
    return a.reshape(a.shape[0], a.shape[1] * a.shape[2], a.shape[3])


def _weights(q: jax.Array, k: jax.Array, scale: float, precision: Any,
             **mask_bias: Any) -> jax.Array:
    """Softmax rows of ``scale * q . k`` (float32 or wider): the maps the forwards return."""
    acc = jnp.promote_types(acc_dtype(q), acc_dtype(k))
    s = jnp.einsum("...qd,...kd->...qk", q, k, precision=precision, preferred_element_type=acc)
    return attention_weights(s * scale, **mask_bias)


def _check_gamma(fn: str, gamma: Any) -> None:
    check_array(fn, "gamma", gamma)
    if gamma.size != 1:
        raise fail(fn, "gamma", "a scalar or shape (1,) array", f"shape {shape_of(gamma)}")


@batch_dims(x=NHWC)
def non_local(
    x: jax.Array,
    *,
    theta: Layer,
    phi: Layer,
    g: Layer,
    out: Layer,
    concat_project: Layer | None = None,
    mode: str = "embedded_gaussian",
    use_scale: bool = True,
    sub_sample: bool = False,
    implementation: str = "auto",
    precision: Any = None,
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Non-local block: ``x + out(sum_j f(theta_i, phi_j) g_j / C(x))``.

    Wang et al., "Non-local Neural Networks", CVPR 2018. Modes (Sec. 3.2):

    * ``"embedded_gaussian"``: ``softmax_j(theta_i . phi_j * s)``, ``s = 1/sqrt(Ci)`` when
      ``use_scale`` (the official code's ``NONLOCAL.USE_SCALE`` and mmcv's default) else 1;
      through ``attention`` (chunked for large maps: no (HW, HW) matrix is stored).
    * ``"dot_product"``: ``theta_i . phi_j / Nk``; computed as ``theta (phi^T g) / Nk``
      (associativity: O(HW * Ci^2), no (HW, HW) matrix; equal to the official order to float
      rounding).
    * ``"concatenation"``: ``relu(w . [theta_i; phi_j]) / Nk``; since ``w`` is linear without
      bias, ``w . [theta_i; phi_j] = w . [theta_i; 0] + w . [0; phi_j]``, so ``concat_project``
      is applied to the two halves separately and the (HW, Nk) pairwise matrix is an outer sum.

    Args:
      x: (N, H, W, C) feature map.
      theta, phi, g: layers (N, H, W, C) -> (N, H, W, Ci) (1x1 convolutions).
      out: layer (N, H, W, Ci) -> (N, H, W, C) (1x1 conv, optionally followed by BatchNorm),
        initialised to output zeros so the block starts as the identity.
      concat_project: for ``"concatenation"``: linear layer (..., 2 Ci) -> (..., 1), no bias.
      mode: one of ``NON_LOCAL_MODES``.
      use_scale: scale the embedded-Gaussian logits by ``1/sqrt(Ci)``.
      sub_sample: 2x2 max-pool ``phi(x)`` and ``g(x)`` (keys/values) as in the paper, Sec. 4.
      implementation: passed to ``attention`` (``"auto"``, ``"xla"``, ``"chunked"``).
      precision: ``jax.lax.Precision`` of the attention matmuls.
      return_maps: also return the attention rows (see Returns). They are computed for it
        (an (N, H*W, Nk) array): the default call never builds them.

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"attention"`` (N, H*W, Nk), float32 (or wider): row ``i * W + j`` holds pixel
      (i, j)'s pairwise weights ``f / C(x)`` over the Nk key pixels (row-major; Nk = H*W, or
      (H//2)*(W//2) with ``sub_sample``); softmax rows summing to 1 for
      ``"embedded_gaussian"``.
    """
    fn = "non_local"
    check_nhwc(fn, "x", x)
    check_choice(fn, "mode", mode, NON_LOCAL_MODES)
    if mode == "concatenation" and concat_project is None:
        raise fail(fn, "concat_project", "a layer for mode='concatenation'", "None")
    n, h, w, _ = x.shape
    t, p, gx = theta(x), phi(x), g(x)
    if sub_sample:
        if h < 2 or w < 2:
            raise fail(fn, "x", "at least 2x2 pixels for sub_sample=True", f"shape {x.shape}")
        # torch.nn.MaxPool2d(2) (stride 2, odd edges dropped)
        p, gx = _max_pool_2x2(p, ceil_mode=False), _max_pool_2x2(gx, ceil_mode=False)
    tq, pk, gv = _tokens(t), _tokens(p), _tokens(gx)
    nk = pk.shape[1]
    if mode == "embedded_gaussian":
        scale = tq.shape[-1] ** -0.5 if use_scale else 1.0
        y = attention(tq, pk, gv, score="scaled_dot", scale=scale,
                      implementation=implementation, precision=precision)
        f = _weights(tq, pk, scale, precision) if return_maps else None
    elif mode == "dot_product":
        acc = jnp.promote_types(acc_dtype(tq), acc_dtype(gv))
        ctx = jnp.einsum("nkc,nkd->ncd", pk, gv, precision=precision,
                         preferred_element_type=acc)
        y = jnp.einsum("nqc,ncd->nqd", tq.astype(acc), ctx, precision=precision) / nk
        f = (jnp.einsum("nqc,nkc->nqk", tq, pk, precision=precision,
                        preferred_element_type=acc) / nk) if return_maps else None
    else:
        a = _tokens(concat_project(jnp.concatenate([t, jnp.zeros_like(t)], -1)))
        b = _tokens(concat_project(jnp.concatenate([jnp.zeros_like(p), p], -1)))
        acc = acc_dtype(a)
        f = jax.nn.relu(a.astype(acc) + jnp.swapaxes(b, 1, 2).astype(acc)) / nk
        y = jnp.einsum("nqk,nkd->nqd", f, gv.astype(acc), precision=precision)
    y = y.reshape(n, h, w, y.shape[-1]).astype(t.dtype)  # -1 fails for N = 0
    z = (out(y) + x).astype(x.dtype)
    return (z, {"attention": f}) if return_maps else z


@batch_dims(x=NHWC)
def position_attention(
    x: jax.Array,
    *,
    query: Layer,
    key: Layer,
    value: Layer,
    gamma: jax.Array,
    implementation: str = "auto",
    precision: Any = None,
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """DANet position attention module (PAM): ``gamma * softmax(q k^T) v + x`` over pixels.

    Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019, Sec. 3.2 (no logit
    scaling, as the official code). The (HW, HW) softmax goes through ``attention``.

    Args:
      x: (N, H, W, C) feature map.
      query, key: layers (N, H, W, C) -> (N, H, W, Cq) (1x1 convs, Cq = C // 8 officially).
      value: layer (N, H, W, C) -> (N, H, W, C).
      gamma: scalar or (1,) learned residual weight (initialised to 0).
      implementation: passed to ``attention``.
      precision: ``jax.lax.Precision`` of the attention matmuls.
      return_maps: also return the attention rows (see Returns). They are computed for it
        (an (N, H*W, H*W) array): the default call never builds them.

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"attention"`` (N, H*W, H*W), float32 (or wider): row ``i * W + j`` is pixel (i, j)'s
      softmax over all pixels (row-major), summing to 1.
    """
    fn = "position_attention"
    check_nhwc(fn, "x", x)
    _check_gamma(fn, gamma)
    q, k = _tokens(query(x)), _tokens(key(x))
    y = attention(q, k, _tokens(value(x)), score="dot", implementation=implementation,
                  precision=precision)
    y = y.reshape(x.shape[:3] + y.shape[-1:])
    out = (gamma.reshape(()) * y + x).astype(x.dtype)
    return (out, {"attention": _weights(q, k, 1.0, precision)}) if return_maps else out


@batch_dims(x=NHWC)
def channel_self_attention(
    x: jax.Array, *, gamma: jax.Array, return_maps: bool = False
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """DANet channel attention module (CAM): ``gamma * softmax(max(E) - E) X + x``, E = X X^T.

    Fu et al., CVPR 2019, Sec. 3.3, with the official code's energy: the softmax runs over
    ``rowmax(E) - E`` rather than E (the paper's Eq. 3). Softmax is shift-invariant, so this is
    ``softmax(-E)``: each channel attends most to the channels it is *least* correlated with.
    We reproduce the official code; the row max is held constant under autodiff, which changes
    no gradient (the gradient of a softmax w.r.t. a per-row shift is exactly zero).
    Energies are accumulated in float32 (they grow like |x|^2 H W).

    Args:
      x: (N, H, W, C) feature map.
      gamma: scalar or (1,) learned residual weight (initialised to 0).
      return_maps: also return the attention rows (see Returns).

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"attention"`` (N, C, C), float32 (or wider): row c is channel c's softmax over the
      channels, summing to 1.
    """
    fn = "channel_self_attention"
    check_nhwc(fn, "x", x)
    _check_gamma(fn, gamma)
    if x.size == 0:  # gamma * (an empty y) + x
        return jnp.asarray(x)
    acc = acc_dtype(x)
    # The pixel axis is contracted where it lies, on the (N, HW, C) tokens: no (N, C, HW) copy
    # either way. The energies are finite dot products and no channel is masked, so the softmax
    # needs no empty-row guard. Against the transposed (N, C, HW) form with the guarded softmax,
    # XLA:CPU's forward+backward at 14x14x128 (AMD EPYC Zen 4, 2026-12-02, two alternating
    # runs): batch 1 0.69-0.78 -> 0.61-0.69 ms, batch 8 3.7-4.4 -> 3.0-3.4, batch 32 15.9-17.2
    # -> 15.1-15.4; forward unchanged within noise.
    t = _tokens(x).astype(acc)  # (N, HW, C)
    energy = jnp.einsum("npc,npd->ncd", t, t)  # (N, C, C)
    energy = jax.lax.stop_gradient(jnp.max(energy, -1, keepdims=True)) - energy
    e, denom = _masked_exp(energy, None, guard=False)
    a = e / denom  # (N, C, C)
    y = jnp.einsum("ncd,npd->npc", a, t).reshape(x.shape)
    out = (gamma.reshape(()).astype(acc) * y + x).astype(x.dtype)
    return (out, {"attention": a}) if return_maps else out


@batch_dims(x=NHWC)
def dual_attention_head(
    x: jax.Array,
    *,
    conv5a: Layer,
    conv5c: Layer,
    pam: Layer,
    cam: Layer,
    conv51: Layer,
    conv52: Layer,
    conv8: Layer,
) -> jax.Array:
    """DANet head: two conv-BN-ReLU branches, PAM on one and CAM on the other, summed, fused.

    Fu et al., CVPR 2019, Fig. 2 and the official ``DANetHead``:
    ``conv8(conv51(pam(conv5a(x))) + conv52(cam(conv5c(x))))``.

    Args:
      x: (N, H, W, C) feature map.
      conv5a, conv5c: (N, H, W, C) -> (N, H, W, Ci) (3x3 conv-BN-ReLU, Ci = C // 4).
      pam: position attention (N, H, W, Ci) -> (N, H, W, Ci).
      cam: channel attention (N, H, W, Ci) -> (N, H, W, Ci).
      conv51, conv52: (N, H, W, Ci) -> (N, H, W, Ci) (3x3 conv-BN-ReLU).
      conv8: fusion (N, H, W, Ci) -> (N, H, W, Co) (1x1 conv with bias).

    Returns:
      (N, H, W, Co), dtype of ``x``.
    """
    check_nhwc("dual_attention_head", "x", x)
    sa = conv51(pam(conv5a(x)))
    sc = conv52(cam(conv5c(x)))
    return conv8(sa + sc).astype(x.dtype)


def _criss_cross_once(x, query, key, value, gamma, precision):
    h, w = x.shape[1], x.shape[2]
    q, k, v = query(x), key(x), value(x)
    acc = jnp.promote_types(acc_dtype(q), acc_dtype(v))
    e_col = jnp.einsum("nhwc,ngwc->nhwg", q, k, precision=precision,
                       preferred_element_type=acc)
    e_row = jnp.einsum("nhwc,nhvc->nhwv", q, k, precision=precision,
                       preferred_element_type=acc)
    energy = jnp.concatenate([e_col, e_row], -1)  # (N, H, W, H + W)
    # The pixel itself is in both its column and its row: the official code masks it (-inf)
    # in the column part, so it is counted once, through the row.
    col_mask = jnp.broadcast_to(~jnp.eye(h, dtype=bool)[:, None, :], (h, w, h))
    mask = jnp.concatenate([col_mask, jnp.ones((h, w, w), bool)], -1)
    a = attention_weights(energy, mask=mask)
    vf = v.astype(acc)
    out = (jnp.einsum("nhwg,ngwc->nhwc", a[..., :h], vf, precision=precision)
           + jnp.einsum("nhwv,nhvc->nhwc", a[..., h:], vf, precision=precision))
    return (gamma.reshape(()) * out + x).astype(x.dtype), a


@batch_dims(x=NHWC)
def criss_cross_attention(
    x: jax.Array,
    *,
    query: Layer,
    key: Layer,
    value: Layer,
    gamma: jax.Array,
    recurrence: int = 2,
    precision: Any = None,
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Criss-cross attention, applied ``recurrence`` times with the same weights (RCCA).

    Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019. Each
    pixel attends, with one softmax, to the H pixels of its column and the W pixels of its row;
    as in the official code its own position is masked in the column part (so it appears once).
    Two passes (R = 2) give every pixel information from every other pixel. Memory per pass is
    O(N H W (H + W)), not O((H W)^2).

    Args:
      x: (N, H, W, C) feature map.
      query, key: layers (N, H, W, C) -> (N, H, W, Cq) (1x1 convs, Cq = C // 8 officially).
      value: layer (N, H, W, C) -> (N, H, W, C).
      gamma: scalar or (1,) learned residual weight (initialised to 0).
      recurrence: number of passes R (the paper uses 2).
      precision: ``jax.lax.Precision`` of the einsums.
      return_maps: also return the attention rows (see Returns).

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"attention"`` (N, R, H, W, H + W), float32 (or wider): pass r's softmax of pixel
      (i, j) over the H pixels of its column (index g < H: pixel (g, j); its own entry g = i
      is masked, weight 0) then the W pixels of its row (index H + v: pixel (i, v)); each
      row sums to 1.
    """
    fn = "criss_cross_attention"
    check_nhwc(fn, "x", x)
    _check_gamma(fn, gamma)
    check_positive_int(fn, "recurrence", recurrence)
    maps = []
    for _ in range(recurrence):
        x, a = _criss_cross_once(x, query, key, value, gamma, precision)
        maps.append(a)
    return (x, {"attention": jnp.stack(maps, axis=1)}) if return_maps else x


def _check_pair(fn: str, size: Any) -> tuple[int, int]:
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise fail(fn, "size", "a pair (H, W)", repr(size))
    check_positive_int(fn, "size[0]", size[0])
    check_positive_int(fn, "size[1]", size[1])
    return int(size[0]), int(size[1])


def relative_position_index(*, size: tuple[int, int]) -> jax.Array:
    """Index into a ((2H-1)(2W-1), heads) relative-position table for every pixel pair.

    Swin Transformer (Liu et al., ICCV 2021): pair (i, j) looks up the offset
    ``(dh + H - 1) * (2W - 1) + (dw + W - 1)``, with ``(dh, dw) = pos_i - pos_j``.

    Args:
      size: (H, W) of the map.

    Returns:
      int32 indices of shape (H*W, H*W).
    """
    h, w = _check_pair("relative_position_index", size)
    ch, cw = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    ch, cw = ch.reshape(-1), cw.reshape(-1)
    dh = ch[:, None] - ch[None, :] + h - 1
    dw = cw[:, None] - cw[None, :] + w - 1
    return (dh * (2 * w - 1) + dw).astype(jnp.int32)


def relative_position_bias(table: jax.Array, *, size: tuple[int, int]) -> jax.Array:
    """Per-head attention bias from a learned relative-position table (Swin-style).

    Args:
      table: ((2H-1)(2W-1), heads) learned biases.
      size: (H, W) of the map.

    Returns:
      bias of shape (heads, H*W, H*W), for ``attention(bias=...)``.
    """
    h, w = _check_pair("relative_position_bias", size)
    rows = (2 * h - 1) * (2 * w - 1)
    check_array("relative_position_bias", "table", table)
    if table.ndim != 2 or table.shape[0] != rows:
        raise fail("relative_position_bias", "table", f"shape ((2H-1)(2W-1)={rows}, heads) for "
                   f"size {(h, w)}", f"shape {shape_of(table)}")
    return jnp.moveaxis(table[relative_position_index(size=size)], -1, 0)


@batch_dims(x=NHWC)
def multi_head_self_attention_2d(
    x: jax.Array,
    *,
    qkv: Layer,
    proj: Layer,
    num_heads: int,
    pos_embed: jax.Array | None = None,
    rel_pos_table: jax.Array | None = None,
    implementation: str = "auto",
    precision: Any = None,
    return_maps: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Multi-head self-attention with the pixels as tokens: ``proj(MHSA(x + pos))``.

    Vaswani et al., NeurIPS 2017 applied to a feature map, as in ViT (Dosovitskiy et al., ICLR
    2021; optional absolute position embedding) and BoTNet (Srinivas et al., CVPR 2021;
    optional learned relative position bias, here Swin's table form). Logits scaled by
    ``1/sqrt(head_dim)``; ``qkv`` output channels are ordered (3, heads, head_dim) as timm's
    ``Attention``.

    Args:
      x: (N, H, W, C) feature map.
      qkv: per-pixel layer (a Dense), called on the pixels as rows: (N*H*W, C) ->
        (N*H*W, 3C).
      proj: per-pixel layer, (N*H*W, C) -> (N*H*W, C).
      num_heads: number of heads (divides C).
      pos_embed: optional (1, H, W, C) or (H, W, C) absolute embedding added to ``x`` first.
      rel_pos_table: optional ((2H-1)(2W-1), heads) relative-position bias table.
      implementation: passed to ``attention``.
      precision: ``jax.lax.Precision`` of the attention matmuls.
      return_maps: also return the attention rows (see Returns). They are computed for it
        (an (N, heads, H*W, H*W) array): the default call never builds them.

    Returns:
      (N, H, W, C), dtype of ``x``; with ``return_maps`` a pair (output, maps) with
      ``"attention"`` (N, heads, H*W, H*W), float32 (or wider): row ``i * W + j`` is pixel
      (i, j)'s softmax over all pixels (row-major) in each head, summing to 1.
    """
    fn = "multi_head_self_attention_2d"
    check_nhwc(fn, "x", x)
    n, h, w, c = x.shape
    check_positive_int(fn, "num_heads", num_heads)
    check_divides(fn, "channels", c, "num_heads", num_heads)
    xin = x
    if pos_embed is not None:
        check_array(fn, "pos_embed", pos_embed)
        if tuple(pos_embed.shape[-3:]) != (h, w, c) or pos_embed.ndim not in (3, 4):
            raise fail(fn, "pos_embed", f"shape (1, {h}, {w}, {c}) (matching x)",
                       f"shape {shape_of(pos_embed)}")
        xin = x + pos_embed.reshape(1, h, w, c).astype(x.dtype)
    bias = None
    if rel_pos_table is not None:
        bias = relative_position_bias(rel_pos_table, size=(h, w))
        if bias.shape[0] != num_heads:
            raise fail(fn, "rel_pos_table", f"{num_heads} heads on its last axis",
                       f"shape {shape_of(rel_pos_table)}")
    # The layers see the pixels as rows of a matrix: XLA:CPU differentiates a Dense on the
    # (N, H, W, C) map followed by the head split 6x slower (at (32, 14, 14, 128), 8 heads:
    # 57 ms against 9 ms for the head split's forward+backward; Intel Xeon, 2026-12-02).
    t = qkv(xin.reshape(n * h * w, c))
    if t.shape[-1] != 3 * c:
        raise fail(fn, "qkv", f"a layer with 3C={3 * c} output channels", f"{t.shape[-1]}")
    t = t.reshape(n, h * w, 3, num_heads, c // num_heads)
    q, k, v = (jnp.swapaxes(t[:, :, i], 1, 2) for i in range(3))  # (N, heads, T, hd)
    y = attention(q, k, v, score="scaled_dot", bias=bias, implementation=implementation,
                  precision=precision)
    y = jnp.swapaxes(y, 1, 2).reshape(n * h * w, c)
    out = proj(y)
    out = out.reshape(n, h, w, out.shape[-1]).astype(x.dtype)
    if return_maps:
        return out, {"attention": _weights(q, k, (c // num_heads) ** -0.5, precision, bias=bias)}
    return out
