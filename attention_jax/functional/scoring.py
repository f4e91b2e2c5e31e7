"""QKV attention: scores, NaN-safe masked softmax, weighted sum, and memory-efficient attention.

Layout ``(..., T, D)``: tokens on the second-to-last axis, features on the last, any leading
batch/head dimensions (broadcast between ``q``, ``k`` and ``v``), as
``torch.nn.functional.scaled_dot_product_attention``.

Numerical policy: scores and the softmax are computed in float32 for bf16/fp16 input
(``acc_dtype``); masked entries get exactly zero weight, and a row with every key masked gets
all-zero weights (and a zero output), never NaN, with finite gradients.

``attention(..., implementation="chunked")`` never builds the (Tq, Tk) score matrix: it loops
over heads, query chunks and, inside, key chunks with an online (running max / running sum)
softmax. For dot-product scores (``dot``, ``scaled_dot``, ``cosine``) it is FlashAttention
(``_flash.py``): a custom VJP that saves only the output and two statistics per query and
recomputes each (q_chunk, k_chunk) block in the backward pass; for ``additive`` and callable
scores each key-chunk step is wrapped in ``jax.checkpoint`` instead. Memory is O(T * D) either
way. On the CPU, ``"auto"`` runs the same FlashAttention as a C++ kernel
(``implementation="native"``, ``attention_jax/_native/attention.cc``) where it applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax._validation import (
    check_array,
    check_choice,
    check_floating,
    check_min_rank,
    check_positive_int,
    fail,
    shape_of,
)
from attention_jax.functional._flash import (
    checkpointed_attention,
    flash_attention,
    native_attention,
    native_unsupported,
)
from attention_jax.functional._numerics import acc_dtype

__all__ = [
    "SCORES",
    "CHUNKED_THRESHOLD",
    "CPU_NATIVE_THRESHOLD",
    "CPU_DIRECT_FORWARD_MIN",
    "CPU_NATIVE_GRAD_THRESHOLD",
    "dot_scores",
    "scaled_dot_scores",
    "cosine_scores",
    "additive_scores",
    "attention_weights",
    "attend",
    "attention",
]

SCORES = ("dot", "scaled_dot", "cosine", "additive")
"""Score kinds accepted by ``attention(score=...)`` (a callable ``(q, k) -> scores`` too)."""

CHUNKED_THRESHOLD = 2**24
"""``attention(implementation="auto")`` switches to the chunked path when the full score tensor
(all batch/head dims times Tq times Tk) would hold more elements than this (64 MiB in float32)."""

CPU_NATIVE_THRESHOLD = 2**22
"""On the CPU, ``attention(implementation="auto")`` runs the native kernel (where it applies)
for calls that are not differentiated above this many score elements (and below
``CHUNKED_THRESHOLD``); between ``CPU_DIRECT_FORWARD_MIN`` and this they take the direct path.
Other backends are unaffected (read when a call is traced: assign another value to move the
crossover).

Measured on an AMD EPYC Zen 5 (AVX-512; one core, CPU time, 196-1024 tokens, D 16-64, before
the kernel's 12 x 32 micro-kernel and its split of few heads over threads): the direct path's
forward is one YNNPACK subgraph that keeps the scores in cache and beat the kernel's forward up
to ~8M elements (1.3-1.7x faster). On an Intel Xeon (AVX-512, AMX; both cores, 2026-12-03, the
current kernel) the kernel's forward against the direct path's: 1.05-1.11x at 1.0-4.9M
elements with D 64 or eight heads of D 16 (0.85x at 1.2M with one head of D 16), 0.84x at 9.8M.
2**22 (16 MB of float32 scores) stays."""

CPU_DIRECT_FORWARD_MIN = 2**19
"""Calls that are not differentiated and have more score elements than this, up to
``CPU_NATIVE_THRESHOLD``, take the direct path on the CPU (see there); at most this many (from
``CPU_NATIVE_GRAD_THRESHOLD``) take the kernel's forward.

Small calls pay the direct path's fixed costs: the kernel's forward against the direct path's
on the Intel Xeon (both cores, 2026-12-03): 0.46 / 0.59 / 0.76 / 0.76x for one head of 256
tokens at D 64, batch 1 / 2 / 4 / 8 (65,536-524,288 elements), 0.43-0.85x for one head of 196
tokens at D 16 or 64 up to 614,656 elements, 0.65x for eight heads of 196 at D 16 (batch 1); on
the AMD EPYC Zen 4 (2026-12-02, after the split of few heads over threads) one head of 256
tokens at D 64, batch 1: 0.14-0.16 ms against the direct path's ~0.35 (PyTorch's SDPA
0.13-0.14)."""

CPU_NATIVE_GRAD_THRESHOLD = 2**16
"""On the CPU, ``attention(implementation="auto")`` runs the native kernel (where it applies)
from this many score elements up: its forward and backward under differentiation
(``jax.grad``, ``jax.vjp``; the kernel's backward needs its own forward's row statistics), and
its forward for calls that are not differentiated, except between ``CPU_DIRECT_FORWARD_MIN``
and ``CPU_NATIVE_THRESHOLD`` (the direct path's forward there). Below it, the direct path
(read when a call is traced).

The kernel's forward+backward against the direct path's, both cores: on the Intel Xeon
(2026-12-03) 0.67x at 65,536 elements (one head of 256 tokens, D 64, batch 1), 0.40-0.60x
from 131,072 to 524,288, 0.50-0.57x for eight heads of 196 at D 16 (batch 1-8), 0.79-0.94x at
16,384-38,416 elements and 0.88-0.90x at 1,024-4,096 (where its forward alone is even or up to
2x slower, and the Zen 4 was not measured: the threshold stays at 2**16); on the AMD EPYC Zen
4 (2026-12-02) 0.45-0.53 ms against ~0.8 at 65,536 elements (PyTorch's 0.55-0.70), and at
batch 8 / 32 one head of 196 or 256 tokens at D 64 0.68-1.02x, one of 196 at D 16 0.51 /
0.59x, eight of 196 at D 16 0.41 / 0.25x. Not measured on the Zen 5 since the kernel's
changes (before them it was faster there only from ~2.5M elements)."""

_IMPLEMENTATIONS = ("auto", "xla", "chunked", "native")
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------


def _check_qk(fn: str, q: Any, k: Any, *, same_d: bool = True) -> None:
    check_min_rank(fn, "q", q, 2, "(..., Tq, D)")
    check_min_rank(fn, "k", k, 2, "(..., Tk, D)")
    check_floating(fn, "q", q)
    check_floating(fn, "k", k)
    for arg, a in (("q", q), ("k", k)):
        if a.shape[-1] == 0:
            raise fail(fn, arg, "a feature size D >= 1 on its last axis", f"shape {shape_of(a)}")
    if same_d and q.shape[-1] != k.shape[-1]:
        raise fail(fn, "k", f"the feature size D={q.shape[-1]} of q on its last axis",
                   f"shape {shape_of(k)}")
    try:
        jnp.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    except ValueError:
        raise fail(fn, "k", f"leading (batch/head) dims broadcastable with q's {q.shape[:-2]}",
                   f"shape {shape_of(k)}") from None


def _dot(q: jax.Array, k: jax.Array, precision=None) -> jax.Array:
    """q (..., Tq, D) . k (..., Tk, D) -> (..., Tq, Tk), accumulated in float32 or wider."""
    acc = jnp.promote_types(acc_dtype(q), acc_dtype(k))
    return jnp.einsum("...qd,...kd->...qk", q, k, precision=precision,
                      preferred_element_type=acc)


def _l2_normalize(x: jax.Array, eps: float) -> jax.Array:
    # eps inside the square root: a zero vector maps to zero with a finite gradient 1/sqrt(eps).
    xf = x.astype(acc_dtype(x))
    return xf * jax.lax.rsqrt(jnp.sum(xf * xf, axis=-1, keepdims=True) + eps)


def dot_scores(q: jax.Array, k: jax.Array) -> jax.Array:
    """Dot-product scores ``q . k`` (Luong et al., 2015).

    Args:
      q: (..., Tq, D) queries.
      k: (..., Tk, D) keys (leading dims broadcast with ``q``'s).

    Returns:
      (..., Tq, Tk) scores, accumulated in float32 and returned in ``q``'s dtype.
    """
    _check_qk("dot_scores", q, k)
    return _dot(q, k).astype(jnp.result_type(q, k))


def _default_scale(fn: str, scale: float | None, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if not isinstance(scale, (int, float, np.floating)) or not math.isfinite(scale):
        raise fail(fn, "scale", "a finite number or None", repr(scale))
    return float(scale)


def scaled_dot_scores(q: jax.Array, k: jax.Array, *, scale: float | None = None) -> jax.Array:
    """Scaled dot-product scores ``scale * q . k`` (Vaswani et al., 2017).

    Args:
      q: (..., Tq, D) queries.
      k: (..., Tk, D) keys.
      scale: multiplier; ``None`` means ``1 / sqrt(D)`` (PyTorch's default).

    Returns:
      (..., Tq, Tk) scores in ``q``'s dtype (accumulated in float32).
    """
    _check_qk("scaled_dot_scores", q, k)
    s = _default_scale("scaled_dot_scores", scale, q.shape[-1])
    return (_dot(q, k) * s).astype(jnp.result_type(q, k))


def cosine_scores(
    q: jax.Array, k: jax.Array, *, temperature: float = 1.0, eps: float = 1e-12
) -> jax.Array:
    """Cosine-similarity scores ``cos(q, k) / temperature`` (Graves et al., 2014; Swin v2).

    The norms are ``sqrt(|x|^2 + eps)``, so a zero query or key gives a score of 0 and finite
    gradients.

    Args:
      q: (..., Tq, D) queries.
      k: (..., Tk, D) keys.
      temperature: positive divisor of the cosine.
      eps: added to the squared norms.

    Returns:
      (..., Tq, Tk) scores in ``q``'s dtype, each in ``[-1/temperature, 1/temperature]``.
    """
    _check_qk("cosine_scores", q, k)
    _check_positive("cosine_scores", "temperature", temperature)
    _check_positive("cosine_scores", "eps", eps)
    out = _dot(_l2_normalize(q, eps), _l2_normalize(k, eps)) / temperature
    return out.astype(jnp.result_type(q, k))


def _check_positive(fn: str, arg: str, value: Any) -> None:
    if not isinstance(value, (int, float, np.floating)) or not value > 0 or math.isinf(value):
        raise fail(fn, arg, "a positive finite number", repr(value))


def _check_additive_params(fn: str, q, k, w_q, w_k, v, bias) -> None:
    check_array(fn, "w_q", w_q)
    check_array(fn, "w_k", w_k)
    check_array(fn, "v", v)
    if w_q.ndim != 2 or w_q.shape[0] != q.shape[-1]:
        raise fail(fn, "w_q", f"shape (D_q={q.shape[-1]}, A)", f"shape {shape_of(w_q)}")
    a = w_q.shape[1]
    if w_k.shape != (k.shape[-1], a):
        raise fail(fn, "w_k", f"shape (D_k={k.shape[-1]}, A={a})", f"shape {shape_of(w_k)}")
    if v.shape != (a,):
        raise fail(fn, "v", f"shape (A={a},)", f"shape {shape_of(v)}")
    if bias is not None:
        check_array(fn, "bias", bias)
        if bias.shape != (a,):
            raise fail(fn, "bias", f"shape (A={a},)", f"shape {shape_of(bias)}")


def _additive_prepare(q, k, w_q, w_k, bias, precision=None):
    acc = acc_dtype(q)
    qa = jnp.matmul(q, w_q, precision=precision, preferred_element_type=acc)
    ka = jnp.matmul(k, w_k, precision=precision, preferred_element_type=acc)
    if bias is not None:
        ka = ka + bias.astype(acc)
    return qa, ka


def _additive_block(qa: jax.Array, ka: jax.Array, v: jax.Array) -> jax.Array:
    """qa (..., Tq, A), ka (..., Tk, A) -> v . tanh(qa_i + ka_j): (..., Tq, Tk)."""
    h = jnp.tanh(qa[..., :, None, :] + ka[..., None, :, :])
    return jnp.einsum("...qka,a->...qk", h, v.astype(h.dtype))


def additive_scores(
    q: jax.Array,
    k: jax.Array,
    *,
    w_q: jax.Array,
    w_k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None = None,
) -> jax.Array:
    """Additive (Bahdanau) scores ``v . tanh(q W_q + k W_k + b)`` (Bahdanau et al., ICLR 2015).

    Builds a (..., Tq, Tk, A) intermediate; ``attention(..., implementation="chunked")`` keeps
    that to one (q_chunk, k_chunk, A) block at a time.

    Args:
      q: (..., Tq, D_q) queries.
      k: (..., Tk, D_k) keys (D_k may differ from D_q).
      w_q: (D_q, A) query projection.
      w_k: (D_k, A) key projection.
      v: (A,) scoring vector.
      bias: optional (A,) bias inside the tanh.

    Returns:
      (..., Tq, Tk) scores in ``q``'s dtype (computed in float32).
    """
    _check_qk("additive_scores", q, k, same_d=False)
    _check_additive_params("additive_scores", q, k, w_q, w_k, v, bias)
    qa, ka = _additive_prepare(q, k, w_q, w_k, bias)
    return _additive_block(qa, ka, v).astype(jnp.result_type(q, k))


# ----------------------------------------------------------------------------------------------
# Softmax and weighted sum
# ----------------------------------------------------------------------------------------------


def _check_broadcast_to(fn: str, arg: str, a: Any, target: tuple[int, ...]) -> None:
    try:
        ok = jnp.broadcast_shapes(shape_of(a), target) == tuple(target)
    except ValueError:
        ok = False
    if not ok:
        raise fail(fn, arg, f"broadcastable to the scores' shape {tuple(target)}",
                   f"shape {shape_of(a)}")


def _check_mask_bias(fn: str, mask: Any, bias: Any, target: tuple[int, ...]) -> None:
    if mask is not None:
        check_array(fn, "mask", mask)
        if mask.dtype != jnp.bool_:
            raise fail(fn, "mask", "a boolean array (True = attend; pass additive masks as "
                       "bias)", f"dtype {mask.dtype}")
        _check_broadcast_to(fn, "mask", mask, target)
    if bias is not None:
        check_floating(fn, "bias", bias)
        _check_broadcast_to(fn, "bias", bias, target)


def _masked_exp(s: jax.Array, mask: jax.Array | None,
                guard: bool = True) -> tuple[jax.Array, jax.Array]:
    """exp(s - rowmax) and its row sum (0.5 where the row is empty), for float32 ``s``.

    ``guard=False`` is for scores known to be finite (dot products of finite inputs, no mask,
    no bias): no row is then empty (the max contributes exp(0) = 1 to its sum), so the two
    guards are dropped. The guards are ``maximum``s, not ``where``s: XLA:CPU fuses a dot, max,
    exp, sum, dot chain into one YNNPACK subgraph that keeps the scores in cache (3x faster at
    256 heads of 196 tokens), and a select splits it into five passes; ``maximum`` does not
    (with a bias, 8 heads of 196 tokens, batch 32: forward 38 -> 4.7 ms on an AMD EPYC Zen 5).
    A row whose max is ``-inf`` (every key masked) gets ``m = finfo.min``, so ``s - m`` stays
    ``-inf`` and its ``exp`` 0, instead of ``-inf - -inf = NaN``. A row with any key sums to at
    least 1 (its max contributes ``exp(0) = 1``), an empty one to 0: the floor 0.5 tells them
    apart with no tie (at a tie ``maximum`` splits the gradient) and keeps ``0 / denom`` and its
    derivatives finite (a floor of ``finfo.tiny`` squares to 0 in the quotient rule: NaN).
    """
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True, initial=-jnp.inf))
    if guard:
        m = jnp.maximum(m, jnp.finfo(s.dtype).min)
    e = jnp.exp(s - m)  # exp(-inf) = 0 with a zero gradient: no NaN from masked entries
    denom = jnp.sum(e, axis=-1, keepdims=True)
    return e, jnp.maximum(denom, 0.5) if guard else denom


def _masked_softmax(s: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax over the last axis of float32 ``s``; masked-out entries and empty rows -> 0."""
    e, denom = _masked_exp(s, mask)
    return e / denom


def attention_weights(
    scores: jax.Array, *, mask: jax.Array | None = None, bias: jax.Array | None = None
) -> jax.Array:
    """Softmax over keys of ``scores + bias`` where ``mask`` is True, NaN-safe.

    Computed in float32 for bf16/fp16 scores. Entries where ``mask`` is False (or whose score
    plus bias is ``-inf``) get weight exactly 0; a row with no key left gets all-zero weights
    (not NaN, not uniform), and gradients stay finite.

    Args:
      scores: (..., Tq, Tk) scores.
      mask: optional boolean array broadcastable to ``scores``; True means "attend" (as
        PyTorch's boolean ``attn_mask`` and ``jax.nn.dot_product_attention``).
      bias: optional additive bias broadcastable to ``scores`` (PyTorch's float ``attn_mask``).

    Returns:
      (..., Tq, Tk) weights in ``scores``' dtype; each row sums to 1 (or 0 if fully masked).
    """
    fn = "attention_weights"
    check_min_rank(fn, "scores", scores, 2, "(..., Tq, Tk)")
    check_floating(fn, "scores", scores)
    _check_mask_bias(fn, mask, bias, tuple(scores.shape))
    s = scores.astype(acc_dtype(scores))
    if bias is not None:
        s = s + bias.astype(s.dtype)
    return _masked_softmax(s, mask).astype(scores.dtype)


def _attend(weights: jax.Array, v: jax.Array, precision=None) -> jax.Array:
    out = jnp.einsum("...qk,...kd->...qd", weights.astype(v.dtype), v, precision=precision,
                     preferred_element_type=acc_dtype(v))
    return out.astype(v.dtype)


def attend(weights: jax.Array, v: jax.Array) -> jax.Array:
    """Weighted sum of values: ``out[i] = sum_j weights[i, j] v[j]``.

    Args:
      weights: (..., Tq, Tk) attention weights.
      v: (..., Tk, Dv) values (leading dims broadcast with ``weights``').

    Returns:
      (..., Tq, Dv) in ``v``'s dtype (accumulated in float32).
    """
    fn = "attend"
    check_min_rank(fn, "weights", weights, 2, "(..., Tq, Tk)")
    check_min_rank(fn, "v", v, 2, "(..., Tk, Dv)")
    check_floating(fn, "weights", weights)
    check_floating(fn, "v", v)
    if weights.shape[-1] != v.shape[-2]:
        raise fail(fn, "v", f"Tk={weights.shape[-1]} tokens on axis -2 (weights' last axis)",
                   f"shape {shape_of(v)}")
    try:
        jnp.broadcast_shapes(weights.shape[:-2], v.shape[:-2])
    except ValueError:
        raise fail(fn, "v", f"leading dims broadcastable with weights' {weights.shape[:-2]}",
                   f"shape {shape_of(v)}") from None
    return _attend(weights, v)


# ----------------------------------------------------------------------------------------------
# attention(): direct and chunked
# ----------------------------------------------------------------------------------------------


def _resolve_score(
    fn: str,
    score: str | ScoreFn,
    q: jax.Array,
    k: jax.Array,
    *,
    scale: float | None,
    temperature: float,
    score_params: Mapping[str, jax.Array] | None,
    precision,
) -> tuple[jax.Array, jax.Array, Callable[[jax.Array, jax.Array], jax.Array], float | None]:
    """(q', k', block, dot_scale) with scores = block(q'_chunk, k'_chunk) in float32 (or wider).

    ``dot_scale`` is c when block(a, b) == c * a . b (dot, scaled-dot, cosine), else None.
    """
    if callable(score):
        _check_qk(fn, q, k, same_d=False)
        return (q, k, lambda a, b: score(a, b).astype(jnp.promote_types(acc_dtype(a), a.dtype)),
                None)
    check_choice(fn, "score", score, SCORES)
    if score == "additive":
        _check_qk(fn, q, k, same_d=False)
        params = dict(score_params or {})
        unknown = set(params) - {"w_q", "w_k", "v", "bias"}
        if unknown or not {"w_q", "w_k", "v"} <= set(params):
            raise fail(fn, "score_params", "a mapping with keys 'w_q', 'w_k', 'v' (and "
                       "optionally 'bias') for score='additive'",
                       repr(sorted(params)) if score_params is not None else "None")
        _check_additive_params(fn, q, k, params["w_q"], params["w_k"], params["v"],
                               params.get("bias"))
        qa, ka = _additive_prepare(q, k, params["w_q"], params["w_k"], params.get("bias"),
                                   precision)
        vv = params["v"]
        return qa, ka, lambda a, b: _additive_block(a, b, vv), None
    _check_qk(fn, q, k)
    if score_params is not None:
        raise fail(fn, "score_params", "None unless score='additive'", "a mapping")
    if score == "cosine":
        _check_positive(fn, "temperature", temperature)
        c = 1.0 / temperature
        return (_l2_normalize(q, 1e-12), _l2_normalize(k, 1e-12),
                lambda a, b: _dot(a, b, precision) * c, c)
    c = 1.0 if score == "dot" else _default_scale(fn, scale, q.shape[-1])
    if c == 1.0:
        return q, k, lambda a, b: _dot(a, b, precision), 1.0
    if q.dtype in (jnp.float32, jnp.float64):
        # Scale the (Tq, D) queries, not the (Tq, Tk) scores: one pass less over the scores.
        return q * jnp.asarray(c, q.dtype), k, lambda a, b: _dot(a, b, precision), 1.0
    return q, k, lambda a, b: _dot(a, b, precision) * c, c


def _sum_leading(g: jax.Array, lead: int) -> jax.Array:
    """``g`` summed over its first ``lead`` axes, as a matmul with a vector of ones: XLA:CPU
    sums over leading axes at ~1 GB/s (a (32, 8, 196, 196) float32 array: 37 ms against 0.4 ms
    as a matmul on an AMD EPYC Zen 5), while a matmul streams the array once."""
    rows = math.prod(g.shape[:lead])
    ones = jnp.ones((rows,), g.dtype)
    out = jnp.einsum("rx,r->x", g.reshape(rows, -1), ones, preferred_element_type=acc_dtype(g),
                     precision=jax.lax.Precision.HIGHEST)
    return out.astype(g.dtype).reshape(g.shape[lead:])


def _add_leading(s: jax.Array, bias: jax.Array, lead: int) -> jax.Array:
    """``s + bias`` for a ``bias`` of ``s``'s trailing shape (broadcast over ``lead`` leading
    axes), whose gradient is summed by ``_sum_leading``."""
    return s + bias


def _add_leading_jvp(lead, primals, tangents):
    # The bias tangent is broadcast as the transpose of ``_sum_leading``, so that reverse mode
    # (which transposes the tangent map) sums the cotangent with ``_sum_leading`` as written.
    s, bias = primals
    ds, dbias = tangents
    out = s + bias
    zero = jax.custom_derivatives.SymbolicZero
    tangent = None if isinstance(ds, zero) else ds
    if not isinstance(dbias, zero):
        spread = jax.linear_transpose(lambda g: _sum_leading(g, lead),
                                      jax.ShapeDtypeStruct(out.shape, out.dtype))
        (t_bias,) = spread(dbias)
        tangent = t_bias if tangent is None else tangent + t_bias
    return out, tangent


_add_leading = jax.custom_jvp(_add_leading, nondiff_argnums=(2,))
_add_leading.defjvp(_add_leading_jvp, symbolic_zeros=True)


def _add_bias(s: jax.Array, bias: jax.Array) -> jax.Array:
    """``s + bias`` (bias broadcastable to ``s``). A bias shared by the leading (batch) axes,
    e.g. a relative-position bias (heads, Tq, Tk) on (N, heads, Tq, Tk) scores, takes
    ``_add_leading``, so that its gradient's sum over the batch is a matmul with ones (on every
    backend: a matrix-vector product streams the array once; on the CPU it replaces XLA's
    leading-axis reduction, ~90x slower at this size)."""
    while bias.ndim and bias.shape[0] == 1 and bias.ndim >= s.ndim:
        bias = bias[0]  # leading unit axes: the same broadcast
    lead = s.ndim - bias.ndim
    if lead <= 0 or tuple(bias.shape) != tuple(s.shape[lead:]) or math.prod(s.shape[:lead]) < 2:
        return s + bias
    return _add_leading(s, bias, lead)


def _direct(q, k, v, block, mask, bias, precision, finite=False):
    """``finite``: the scores are dot products (finite for finite inputs); with no mask or
    bias the softmax then needs no empty-row guards (see ``_masked_exp``), and the leading
    dims (when q, k and v share them) are flattened into one batch axis: XLA:CPU runs the
    fused dot/softmax/dot with several batch axes, one of them of size 1, 2-5x slower (the
    forward of (32, 1, 256, 64) attention 5.6 ms against 2.8 ms as (32, 256, 64); (32, 1, 8,
    196, 16) 41 against 7.3 ms; Intel Xeon, 2026-12-02)."""
    lead = q.shape[:-2]
    if (finite and mask is None and bias is None and len(lead) > 1
            and k.shape[:-2] == v.shape[:-2] == lead):
        flat = lambda a: a.reshape((math.prod(lead),) + a.shape[-2:])
        out = _direct(flat(q), flat(k), flat(v), block, None, None, precision, finite)
        return out.reshape(lead + out.shape[-2:])
    s = block(q, k)
    if bias is not None:
        s = _add_bias(s, bias.astype(s.dtype))
    # Normalise after the weighted sum: one (Tq, Dv) division instead of a (Tq, Tk) one.
    e, denom = _masked_exp(s, mask, guard=not (finite and mask is None and bias is None))
    out = jnp.einsum("...qk,...kd->...qd", e.astype(v.dtype), v, precision=precision,
                     preferred_element_type=acc_dtype(v))
    return (out / denom.astype(out.dtype)).astype(v.dtype)


def _jax_nn_attention(q, k, v, *, scale, implementation):
    """``jax.nn.dot_product_attention`` on (..., T, D) arrays (it wants (B, T, N, H))."""
    batch = jnp.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    qb, kb, vb = (jnp.broadcast_to(a, batch + a.shape[-2:]).reshape(-1, 1, *a.shape[-2:])
                  for a in (q, k, v))
    qb, kb, vb = (jnp.swapaxes(a, 1, 2) for a in (qb, kb, vb))
    out = jax.nn.dot_product_attention(qb, kb, vb, scale=scale, implementation=implementation)
    return out[:, :, 0, :].reshape(batch + out.shape[1:2] + out.shape[-1:])


def _use_jax_nn(q, k, v, score, mask, bias) -> bool:
    # cuDNN's fused kernel: GPU, scaled dot, fp16/bf16, no mask/bias (its masked rows are not
    # NaN-safe the way ours are), head dims it supports.
    return (jax.default_backend() == "gpu" and score == "scaled_dot" and mask is None
            and bias is None and q.dtype == k.dtype == v.dtype
            and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] == v.shape[-1]
            and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    score: str | ScoreFn = "scaled_dot",
    scale: float | None = None,
    temperature: float = 1.0,
    score_params: Mapping[str, jax.Array] | None = None,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    implementation: str = "auto",
    q_chunk_size: int = 512,
    k_chunk_size: int = 1024,
    precision: Any = None,
) -> jax.Array:
    """Attention ``softmax(score(q, k) + bias, masked) @ v`` with any leading batch/head dims.

    Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (and the score functions above).
    Layout and mask semantics follow ``torch.nn.functional.scaled_dot_product_attention``.

    ``implementation``:
      * ``"xla"``: builds the (..., Tq, Tk) scores (fastest for small maps).
      * ``"chunked"``: online softmax over key chunks in a loop over heads and query chunks;
        the backward pass recomputes each block, so peak memory is O(batch * T * D), not
        O(batch * Tq * Tk). Same values and gradients as ``"xla"`` (to float32 rounding) for
        any sizes; ragged last chunks are padded and masked. For dot-product scores this is
        FlashAttention with a custom VJP (reverse mode only: use ``"xla"`` for ``jax.jvp`` /
        ``jax.hessian``); the fastest path on CPU at large T.
      * ``"native"``: FlashAttention as a C++ XLA:CPU kernel (``attention_jax._native``, built
        at import with the local C++ compiler where the CPU has AVX2/FMA): float32,
        dot-product scores (dot, scaled-dot, cosine), no mask or bias, D and Dv multiples of
        8; the same residuals and results as ``"chunked"`` (to float32 rounding), reverse mode
        only, CPU only, partitioned over the leading dims under a sharded ``jit``.
        ``ValueError`` (saying why) where it does not apply or inside
        ``attention_jax.native_disabled()``.
      * ``"auto"``: above ``CHUNKED_THRESHOLD`` score elements, ``"native"`` when compiling for
        the CPU and it applies (``jax.lax.platform_dependent``; not inside
        ``native_disabled()``, the way to ``jax.export`` for the CPU), else ``"chunked"``; below
        it, ``"xla"``, except on the CPU where ``"native"`` applies: from
        ``CPU_NATIVE_GRAD_THRESHOLD`` score elements up ``"native"``, but between
        ``CPU_DIRECT_FORWARD_MIN`` and ``CPU_NATIVE_THRESHOLD`` ``"xla"``'s value with the
        kernel's forward and backward under ``jax.grad`` / ``jax.vjp``. From
        ``CPU_NATIVE_GRAD_THRESHOLD`` up on the CPU, ``"auto"`` is reverse mode only (``"xla"``,
        or ``"auto"`` inside ``attention_jax.native_disabled()`` for modules that call it,
        takes ``jax.jvp`` / ``jax.hessian``). On GPU, for ``score="scaled_dot"`` with
        bf16/fp16 inputs, no mask or bias and a head dim that is a multiple of 8 up to 128, it
        first tries
        ``jax.nn.dot_product_attention(implementation="cudnn")`` (the fused flash kernel) and
        falls back to the above if cuDNN rejects the shapes.

    Args:
      q: (..., Tq, D) queries.
      k: (..., Tk, D) keys (D_k may differ from D for ``score="additive"`` or a callable).
      v: (..., Tk, Dv) values.
      score: ``"dot"``, ``"scaled_dot"``, ``"cosine"``, ``"additive"`` or a callable
        ``(q (..., tq, D), k (..., tk, D)) -> (..., tq, tk)`` that scores each (i, j) pair
        independently (it is called on chunks).
      scale: for ``"scaled_dot"``; ``None`` means ``1 / sqrt(D)``.
      temperature: for ``"cosine"``.
      score_params: for ``"additive"``: ``{"w_q": (D, A), "w_k": (D_k, A), "v": (A,)}`` and
        optionally ``"bias": (A,)``.
      mask: optional boolean, broadcastable to (..., Tq, Tk); True = attend. A query whose
        keys are all masked (or Tk = 0) gets a zero output.
      bias: optional additive bias broadcastable to (..., Tq, Tk) (e.g. relative positions).
      implementation: ``"auto"``, ``"xla"``, ``"chunked"`` or ``"native"``.
      q_chunk_size: query rows per chunk (chunked path).
      k_chunk_size: keys per chunk (chunked path).
      precision: ``jax.lax.Precision`` for the matmuls.

    Returns:
      (..., Tq, Dv) in ``v``'s dtype (scores, softmax and sums accumulated in float32).
    """
    fn = "attention"
    check_min_rank(fn, "v", v, 2, "(..., Tk, Dv)")
    check_floating(fn, "v", v)
    check_choice(fn, "implementation", implementation, _IMPLEMENTATIONS)
    check_positive_int(fn, "q_chunk_size", q_chunk_size)
    check_positive_int(fn, "k_chunk_size", k_chunk_size)
    qp, kp, block, dot_scale = _resolve_score(fn, score, q, k, scale=scale, temperature=temperature,
                                   score_params=score_params, precision=precision)
    if k.shape[-2] != v.shape[-2]:
        raise fail(fn, "v", f"Tk={k.shape[-2]} tokens on axis -2 (as k)", f"shape {shape_of(v)}")
    try:
        batch = jnp.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise fail(fn, "v", f"leading dims broadcastable with q's {q.shape[:-2]} and k's "
                   f"{k.shape[:-2]}", f"shape {shape_of(v)}") from None
    score_shape = tuple(batch) + (q.shape[-2], k.shape[-2])
    _check_mask_bias(fn, mask, bias, score_shape)
    if mask is not None or bias is not None:
        score_shape = jnp.broadcast_shapes(score_shape, *(shape_of(a) for a in (mask, bias)
                                                          if a is not None))

    if q.shape[-2] == 0 or k.shape[-2] == 0:  # no queries, or no keys (as fully masked rows)
        return jnp.zeros(tuple(batch) + (q.shape[-2], v.shape[-1]), v.dtype)
    auto = implementation == "auto"
    if auto:
        if _use_jax_nn(q, k, v, score, mask, bias):
            try:
                return _jax_nn_attention(q, k, v, scale=scale, implementation="cudnn")
            except (ValueError, NotImplementedError, RuntimeError):
                pass
        elements = math.prod(score_shape)
        big = elements > CHUNKED_THRESHOLD
        implementation = "chunked" if big else "xla"
        if (not big and elements >= CPU_NATIVE_GRAD_THRESHOLD
                and native_unsupported(qp, kp, v, mask, bias, dot_scale) is None):
            # Mid-sized on the CPU: the kernel, except undifferentiated calls between
            # CPU_DIRECT_FORWARD_MIN and CPU_NATIVE_THRESHOLD (the direct path's forward, the
            # kernel's under differentiation); elsewhere direct.
            direct = lambda q, k, v: _direct(q, k, v, block, mask, bias, precision, finite=True)
            in_band = CPU_DIRECT_FORWARD_MIN < elements <= CPU_NATIVE_THRESHOLD
            primal = direct if in_band else None
            native = lambda q, k, v: native_attention(q, k, v, scale=dot_scale, primal=primal)
            return jax.lax.platform_dependent(qp, kp, v, cpu=native, default=direct)
    if implementation == "native":
        why = native_unsupported(qp, kp, v, mask, bias, dot_scale)
        if why is not None:
            raise fail(fn, "implementation", "'auto', 'xla' or 'chunked' here: the native "
                       "kernel takes float32 dot-product scores without mask or bias", why)
        return native_attention(qp, kp, v, scale=dot_scale)
    if implementation == "xla":
        return _direct(qp, kp, v, block, mask, bias, precision, finite=dot_scale is not None)
    if dot_scale is not None:
        blocked = lambda q, k, v: flash_attention(
            q, k, v, mask=mask, bias=bias, scale=dot_scale, q_chunk=q_chunk_size,
            k_chunk=k_chunk_size, precision=precision)
        if auto and not native_unsupported(qp, kp, v, mask, bias, dot_scale, warn=True):
            native = lambda q, k, v: native_attention(q, k, v, scale=dot_scale)
            return jax.lax.platform_dependent(qp, kp, v, cpu=native, default=blocked)
        return blocked(qp, kp, v)
    return checkpointed_attention(qp, kp, v, mask=mask, bias=bias, block=block,
                                  q_chunk=q_chunk_size, k_chunk=k_chunk_size,
                                  precision=precision)
