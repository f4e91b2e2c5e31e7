"""Blocked attention: an online softmax over (q_chunk, k_chunk) blocks, head by head.

One forward (``_fwd_head``) serves both chunked paths of ``scoring.attention``:

* dot-product scores (dot, scaled-dot, cosine): FlashAttention (Dao et al., "FlashAttention:
  Fast and Memory-Efficient Exact Attention with IO-Awareness", NeurIPS 2022) with a
  hand-written backward (``flash_attention``) that recomputes each score block from the saved
  row max and 1 / row sum and uses ``dS = P * (dP - rowsum(dO * O))``;
* any other score (additive, callables): autodiff through the same forward with each key-block
  step under ``jax.checkpoint`` (``checkpointed_attention``).

Why a custom VJP where it can be written: the checkpointed scan differentiates the online
softmax step by step (running max, rescaling) and keeps the per-step carries; the closed-form
backward needs only ``out`` and two numbers per query, and its work per block is five small
matmuls and two element-wise passes, as PyTorch's CPU flash kernel.

Why the loop is over heads too: XLA:CPU pays for every large buffer it materialises (the first
touch of fresh pages costs more than the arithmetic); a block of ~1M scores stays in cache. The
flattened batch/head axis is walked with ``lax.map(batch_size=...)`` so each step handles a few
heads' (q_chunk, k_chunk) blocks.

``native_attention`` runs the same algorithm (same residuals: out, row max, 1 / row sum) as a
C++ XLA:CPU kernel (``attention_jax/_native/attention.cc``) for float32 unmasked dot-product
scores.

Private: ``scoring.attention`` validates and calls these.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import _native
from attention_jax.functional._numerics import acc_dtype

Block = Callable[[jax.Array, jax.Array], jax.Array]

BLOCK_ELEMENTS = 2**20
"""Score elements handled per loop step (heads per step = this // (q_chunk * k_chunk))."""


def _pad(a: jax.Array, axis: int, size: int, value) -> jax.Array:
    extra = size - a.shape[axis]
    if extra == 0:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    return jnp.pad(a, widths, constant_values=value)


def _split(a: jax.Array, axis: int, c: int) -> jax.Array:
    """(..., n * c, ...) -> (n, ..., c, ...): the chunk index first, for ``lax.scan``."""
    n = a.shape[axis] // c
    a = a.reshape(*a.shape[:axis], n, c, *a.shape[axis + 1:])
    return jnp.moveaxis(a, axis, 0)


def _merge(a: jax.Array, axis: int) -> jax.Array:
    """Inverse of ``_split``."""
    a = jnp.moveaxis(a, 0, axis)
    return a.reshape(*a.shape[:axis], a.shape[axis] * a.shape[axis + 1], *a.shape[axis + 2:])


def _dot_block(scale: float, precision) -> Block:
    """scale * q . k in float32 (or wider)."""

    def block(qb, kb):
        acc = jnp.promote_types(acc_dtype(qb), acc_dtype(kb))
        s = jnp.einsum("qd,kd->qk", qb, kb, precision=precision, preferred_element_type=acc)
        return s * scale if scale != 1.0 else s

    return block


def _scores(block: Block, qb, kb, bb, mb):
    s = block(qb, kb)
    if bb is not None:
        s = s + bb.astype(s.dtype)
    if mb is not None:
        s = jnp.where(mb, s, -jnp.inf)
    return s


class _Head:
    """Padding/chunking of one head's arrays: q (Tq, D), k (Tk, D), v (Tk, Dv), mask/bias
    (1|Tq, 1|Tk). Padded keys are masked out; padded queries are sliced off."""

    def __init__(self, tq, tk, q_chunk, k_chunk):
        self.tq, self.tk = tq, tk
        self.qc, self.kc = min(q_chunk, tq), min(k_chunk, tk)
        self.nq, self.nk = -(-tq // self.qc), -(-tk // self.kc)
        self.ragged_k = self.nk * self.kc != tk

    def pad(self, q, k, v, mask, bias):
        nqc, nkc = self.nq * self.qc, self.nk * self.kc
        q = _pad(q, 0, nqc, 0)
        k, v = _pad(k, 0, nkc, 0), _pad(v, 0, nkc, 0)
        if self.ragged_k:
            valid = (jnp.arange(nkc) < self.tk)[None, :]
            mask = valid if mask is None else (
                _pad(mask, 1, nkc, False) if mask.shape[1] == self.tk else mask & valid)
        if mask is not None and mask.shape[0] == self.tq:
            mask = _pad(mask, 0, nqc, True)
        if bias is not None:
            if bias.shape[1] == self.tk:
                bias = _pad(bias, 1, nkc, 0)
            if bias.shape[0] == self.tq:
                bias = _pad(bias, 0, nqc, 0)
        return q, k, v, mask, bias

    def query_xs(self, mask, bias, **rows) -> dict:
        """Per-query-chunk inputs for ``lax.map``/``scan``: ``rows`` ((Tq, ...) arrays, split)
        plus the rows of mask ("m") and bias ("b") where they have a query axis."""
        xs = {name: _split(a, 0, self.qc) for name, a in rows.items()}
        for name, a in (("m", mask), ("b", bias)):
            if a is not None and a.shape[0] != 1:
                xs[name] = _split(a, 0, self.qc)
        return xs

    def key_xs(self, k, v, mask_rows, bias_rows) -> dict:
        """Per-key-chunk inputs: k, v and the columns of mask/bias rows with a key axis."""
        ys = {"k": _split(k, 0, self.kc), "v": _split(v, 0, self.kc)}
        for name, a in (("m", mask_rows), ("b", bias_rows)):
            if a is not None and a.shape[1] != 1:
                ys[name] = _split(a, 1, self.kc)
        return ys


def _fwd_head(q, k, v, mask, bias, *, block, q_chunk, k_chunk, precision, checkpoint=False):
    """One head: out (Tq, Dv) and the softmax statistics (Tq, 2): row max m (0 where a row has
    no key) and 1 / row sum (0 where a row has no key), so that P = exp(s - m) / sum.

    ``checkpoint=True`` wraps each key-block step in ``jax.checkpoint``, for differentiating
    through this function (scores without a hand-written backward)."""
    h = _Head(q.shape[0], k.shape[0], q_chunk, k_chunk)
    q, k, v, mask, bias = h.pad(q, k, v, mask, bias)
    acc = jnp.promote_types(jnp.promote_types(acc_dtype(q), acc_dtype(k)), acc_dtype(v))

    def q_step(x):
        qb, mrow, brow = x["q"], x.get("m", mask), x.get("b", bias)
        ys = h.key_xs(k, v, mrow, brow)

        def k_step(carry, y):
            m_prev, l_prev, o_prev = carry
            s = _scores(block, qb, y["k"], y.get("b", brow), y.get("m", mrow))
            # The running max is a constant for autodiff: the output does not depend on it.
            m_new = jnp.maximum(m_prev, jax.lax.stop_gradient(jnp.max(s, -1, keepdims=True)))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            # Nothing seen yet (m_prev = -inf): alpha multiplies zeros; any finite value will do.
            alpha = jnp.exp(jnp.where(jnp.isfinite(m_prev), m_prev, m_safe) - m_safe)
            p = jnp.exp(s - m_safe)
            l_new = alpha * l_prev + jnp.sum(p, -1, keepdims=True)
            pv = jnp.einsum("qk,kd->qd", p.astype(v.dtype), y["v"], precision=precision,
                            preferred_element_type=acc)
            return (m_new, l_new, alpha * o_prev + pv), None

        if checkpoint:
            k_step = jax.checkpoint(k_step)
        init = (jnp.full((h.qc, 1), -jnp.inf, acc), jnp.zeros((h.qc, 1), acc),
                jnp.zeros((h.qc, v.shape[-1]), acc))
        if h.nk == 1:
            (m, total, o), _ = k_step(init, jax.tree.map(lambda a: a[0], ys))
        else:
            (m, total, o), _ = jax.lax.scan(k_step, init, ys)
        # m and 1/l are kept apart, not as log-sum-exp m + log(l): with logits ~1e4 float32
        # cannot hold log(l) next to m to better than ~1e-3.
        inv_l = jnp.where(total > 0, 1.0 / jnp.where(total > 0, total, 1.0), 0.0)
        stats = jnp.concatenate([jnp.where(jnp.isfinite(m), m, 0.0), inv_l], axis=-1)
        return (o * inv_l).astype(v.dtype), stats

    xs = h.query_xs(mask, bias, q=q)
    if h.nq == 1:
        out, stats = q_step(jax.tree.map(lambda a: a[0], xs))
    else:
        out, stats = jax.lax.map(q_step, xs)
        out, stats = _merge(out, 0), _merge(stats, 0)
    return out[:h.tq], stats[:h.tq]


def _bwd_head(q, k, v, mask, bias, out, stats, dout, *, scale, q_chunk, k_chunk, precision):
    """One head's gradients (dq, dk, dv, dbias or None) from the saved out and stats."""
    h = _Head(q.shape[0], k.shape[0], q_chunk, k_chunk)
    tq, tk = h.tq, h.tk
    block = _dot_block(scale, precision)
    bias_shape = None if bias is None else bias.shape
    q, k, v, mask, bias = h.pad(q, k, v, mask, bias)
    acc = jnp.promote_types(jnp.promote_types(acc_dtype(q), acc_dtype(k)), acc_dtype(v))
    dout = _pad(dout.astype(acc), 0, h.nq * h.qc, 0)
    delta = jnp.sum(dout * _pad(out.astype(acc), 0, h.nq * h.qc, 0), -1)  # rowsum(dO * O)
    stats = _pad(stats, 0, h.nq * h.qc, 0)
    bias_k_full = bias is not None and bias.shape[1] != 1
    bias_q_full = bias is not None and bias.shape[0] != 1

    def q_step(carry, x):
        dkt_acc, dvt_acc, db_acc = carry
        qb, mrow, brow = x["q"], x.get("m", mask), x.get("b", bias)
        dob, deltab = x["do"].astype(v.dtype), x["delta"][:, None]
        mb, inv_lb = x["stats"][:, :1], x["stats"][:, 1:]
        # XLA:CPU runs a dot whose left operand contracts over its first axis ~4x slower than
        # the plain layout: transpose the small (chunk, D) operands instead, and accumulate
        # dk and dv as (D, Tk).
        qbt, dobt = qb.T, dob.T
        ys = h.key_xs(k, v, mrow, brow)

        def k_step(dq, y):
            kb, vb = y["k"], y["v"]
            s = _scores(block, qb, kb, y.get("b", brow), y.get("m", mrow))
            p = jnp.exp(s - mb) * inv_lb  # masked: exp(-inf) = 0; empty rows: 1/l = 0
            dvt = jnp.einsum("dq,qk->dk", dobt, p.astype(v.dtype), precision=precision,
                             preferred_element_type=acc)
            dp = jnp.einsum("qd,kd->qk", dob, vb, precision=precision,
                            preferred_element_type=acc)
            ds = p * (dp - deltab)
            dsc = ds * scale if scale != 1.0 else ds
            dq = dq + jnp.einsum("qk,kd->qd", dsc.astype(k.dtype), kb, precision=precision,
                                 preferred_element_type=acc)
            dkt = jnp.einsum("dq,qk->dk", qbt, dsc.astype(q.dtype), precision=precision,
                             preferred_element_type=acc)
            res = {"dkt": dkt, "dvt": dvt}
            if bias is not None:
                res["db"] = ds if bias_q_full else jnp.sum(ds, 0, keepdims=True)
                if not bias_k_full:
                    res["db"] = jnp.sum(res["db"], 1, keepdims=True)
            return dq, res

        dq0 = jnp.zeros((h.qc, q.shape[-1]), acc)
        if h.nk == 1:
            dq, r = k_step(dq0, jax.tree.map(lambda a: a[0], ys))
            r = jax.tree.map(lambda a: a[None], r)
        else:
            dq, r = jax.lax.scan(k_step, dq0, ys)
        dkt_acc = dkt_acc + _merge(r["dkt"], 1)
        dvt_acc = dvt_acc + _merge(r["dvt"], 1)
        db_rows = None
        if bias is not None:
            db = _merge(r["db"], 1) if bias_k_full else jnp.sum(r["db"], 0)
            if bias_q_full:
                db_rows = db
            else:
                db_acc = db_acc + db
        return (dkt_acc, dvt_acc, db_acc), (dq, db_rows)

    xs = h.query_xs(mask, bias, q=q, do=dout, stats=stats, delta=delta)
    nkc = h.nk * h.kc
    db0 = None if bias is None or bias_q_full else jnp.zeros(
        (1, nkc if bias_k_full else 1), acc)
    init = (jnp.zeros((k.shape[-1], nkc), acc), jnp.zeros((v.shape[-1], nkc), acc), db0)
    if h.nq == 1:
        (dkt, dvt, db_acc), (dq, db_rows) = q_step(init, jax.tree.map(lambda a: a[0], xs))
        dq = dq[None]
        db_rows = None if db_rows is None else db_rows[None]
    else:
        (dkt, dvt, db_acc), (dq, db_rows) = jax.lax.scan(q_step, init, xs)
    dq = _merge(dq, 0)[:tq]
    db = None
    if bias is not None:
        db = _merge(db_rows, 0) if bias_q_full else db_acc
        db = db[:bias_shape[0], :bias_shape[1]]
    return dq, dkt.T[:tk], dvt.T[:tk], db


# ---------------------------------------------------------------------------------- batching


def _flat_index(i, batch, shape):
    """Index into ``a.reshape(-1, ...)`` of flat batch index ``i`` for a batch-shape ``shape``
    that broadcasts to ``batch`` (size-1 dims are broadcast)."""
    idx, stride = 0, 1
    rem = i
    coords = []
    for size in reversed(batch):
        coords.append(rem % size)
        rem = rem // size
    coords = coords[::-1]
    for d in reversed(range(len(batch))):
        if shape[d] != 1:
            idx = idx + coords[d] * stride
            stride *= shape[d]
    return idx


def _per_head(fn, arrays, batch, heads_per_step):
    """Run ``fn(dict of per-head arrays)`` over the flattened ``batch`` with ``lax.map``.

    Arrays of the full batch shape are mapped over; broadcast ones are indexed inside the loop.
    """
    nb = len(batch)
    total = math.prod(batch)
    mapped, indexed = {}, {}
    for name, a in arrays.items():
        if a is None:
            continue
        bshape = a.shape[:nb]
        flat = a.reshape((math.prod(bshape),) + a.shape[nb:])
        (mapped if tuple(bshape) == tuple(batch) else indexed)[name] = (flat, bshape)

    def step(x):
        i, xs = x
        heads = dict(xs)
        for name, (flat, bshape) in indexed.items():
            heads[name] = flat[_flat_index(i, batch, bshape)]
        return fn({n: heads.get(n) for n in arrays})

    xs = (jnp.arange(total), {n: f for n, (f, _) in mapped.items()})
    return jax.lax.map(step, xs, batch_size=max(1, min(total, heads_per_step)))


def _sum_to(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum a gradient over the dims along which its input was broadcast."""
    lead = g.ndim - len(shape)
    g = jnp.sum(g, axis=tuple(range(lead))) if lead else g
    axes = tuple(d for d, s in enumerate(shape) if s == 1 and g.shape[d] != 1)
    return jnp.sum(g, axis=axes, keepdims=True) if axes else g


def _batched(q, k, v, mask, bias, q_chunk, k_chunk):
    """The broadcast batch shape, the arrays with leading dims expanded to its rank (as jax
    arrays: ``_per_head`` indexes them with traced indices) and the heads per loop step."""
    arrays = {"q": q, "k": k, "v": v, "mask": mask, "bias": bias}
    arrays = {n: None if a is None else jnp.asarray(a) for n, a in arrays.items()}
    batch = jnp.broadcast_shapes(*(a.shape[:-2] for a in arrays.values() if a is not None))
    nb = len(batch)
    arrays = {n: None if a is None else a.reshape((1,) * (nb + 2 - a.ndim) + a.shape)
              for n, a in arrays.items()}
    per_step = BLOCK_ELEMENTS // (min(q_chunk, q.shape[-2]) * min(k_chunk, k.shape[-2]))
    return batch, arrays, max(1, per_step)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _flash(q, k, v, bias, mask, scale, q_chunk, k_chunk, precision):
    return _flash_fwd(q, k, v, bias, mask, scale, q_chunk, k_chunk, precision)[0]


def _flash_fwd(q, k, v, bias, mask, scale, q_chunk, k_chunk, precision):
    batch, arrays, per_step = _batched(q, k, v, mask, bias, q_chunk, k_chunk)
    block = _dot_block(scale, precision)

    def head(d):
        return _fwd_head(d["q"], d["k"], d["v"], d["mask"], d["bias"], block=block,
                         q_chunk=q_chunk, k_chunk=k_chunk, precision=precision)

    out, stats = _per_head(head, arrays, batch, per_step)
    out = out.reshape(batch + out.shape[-2:])
    stats = stats.reshape(batch + stats.shape[-2:])
    return out, (q, k, v, bias, mask, out, stats)


def _flash_bwd(scale, q_chunk, k_chunk, precision, res, dout):
    q, k, v, bias, mask, out, stats = res
    batch, arrays, per_step = _batched(q, k, v, mask, bias, q_chunk, k_chunk)
    arrays.update(out=out, stats=stats, dout=dout)

    def head(d):
        return _bwd_head(d["q"], d["k"], d["v"], d["mask"], d["bias"], d["out"], d["stats"],
                         d["dout"], scale=scale, q_chunk=q_chunk, k_chunk=k_chunk,
                         precision=precision)

    dq, dk, dv, db = _per_head(head, arrays, batch, per_step)
    unflat = lambda g, a: _sum_to(g.reshape(batch + g.shape[1:]), a.shape).astype(a.dtype)
    # The boolean mask gets no cotangent (None = zero).
    return (unflat(dq, q), unflat(dk, k), unflat(dv, v),
            None if bias is None else unflat(db, bias), None)


_flash.defvjp(lambda q, k, v, bias, mask, scale, qc, kc, prec:
              _flash_fwd(q, k, v, bias, mask, scale, qc, kc, prec), _flash_bwd)


def flash_attention(q, k, v, *, mask, bias, scale, q_chunk, k_chunk, precision):
    """softmax(scale * q k^T + bias, masked) v over (..., T, D) arrays, blocked, custom VJP.

    Validated by the caller. ``mask`` gets no gradient (boolean); ``bias`` does.
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    mask = None if mask is None else jnp.asarray(mask)
    bias = None if bias is None else jnp.asarray(bias)
    return _flash(q, k, v, bias, mask, float(scale), q_chunk, k_chunk, precision)


def checkpointed_attention(q, k, v, *, mask, bias, block: Block, q_chunk, k_chunk, precision):
    """softmax(block(q, k) + bias, masked) v, blocked; differentiated by JAX through the same
    forward with ``jax.checkpoint`` per key block (any ``block``, e.g. additive scores).

    Validated by the caller.
    """
    batch, arrays, per_step = _batched(q, k, v, mask, bias, q_chunk, k_chunk)

    def head(d):
        return _fwd_head(d["q"], d["k"], d["v"], d["mask"], d["bias"], block=block,
                         q_chunk=q_chunk, k_chunk=k_chunk, precision=precision,
                         checkpoint=True)[0]

    out = _per_head(head, arrays, batch, per_step)
    return out.reshape(batch + out.shape[-2:])


# ---------------------------------------------------------------------------- native (CPU)


def native_unsupported(q, k, v, mask, bias, scale, *, warn: bool = False) -> str | None:
    """Why the C++ kernel cannot run this call (None if it can). Reads the state recorded when
    the kernels were loaded (at import): tracing never builds them."""
    if scale is None:
        return "score is not a dot product (dot, scaled_dot, cosine)"
    if mask is not None or bias is not None:
        return "a mask or bias is given"
    dtypes = {jnp.dtype(a.dtype).name for a in (q, k, v)}
    if dtypes != {"float32"}:
        return f"dtypes {sorted(dtypes)} (the kernel is float32)"
    if q.shape[-1] % 8 or v.shape[-1] % 8 or not q.shape[-1] or not v.shape[-1]:
        return f"head dims D={q.shape[-1]}, Dv={v.shape[-1]} (want positive multiples of 8)"
    if not _native.usable("attention", warn=warn):
        return ("the kernel is not available here (it needs AVX2/FMA and a C++ compiler): "
                + _native.status())
    return None


def _fwd_results(q, k, v):
    return (jax.ShapeDtypeStruct(q.shape[:-1] + v.shape[-1:], jnp.float32),
            jax.ShapeDtypeStruct(q.shape[:-1] + (2,), jnp.float32))


def _bwd_results(q, k, v, out, stats, dout):
    return tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (q, k, v))


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _native_flash(q, k, v, scale):
    return _native_flash_fwd(q, k, v, scale)[0]


def _native_flash_fwd(q, k, v, scale):
    # Leading dims are batch (vmap adds more); partitioned over them under a sharded jit.
    out, stats = _native.batched_call(_native.attention_target("fwd"), _fwd_results, (q, k, v),
                                      in_core=(2, 2, 2), out_core=(2, 2),
                                      scale=np.float32(scale))
    return out, (q, k, v, out, stats)


def _native_flash_bwd(scale, res, dout):
    q, k, v, out, stats = res
    return _native.batched_call(_native.attention_target("bwd"), _bwd_results,
                                (q, k, v, out, stats, dout.astype(jnp.float32)),
                                in_core=(2,) * 6, out_core=(2, 2, 2), scale=np.float32(scale))


_native_flash.defvjp(_native_flash_fwd, _native_flash_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _native_grad_flash(q, k, v, scale, primal):
    return primal(q, k, v)


def _native_grad_flash_fwd(q, k, v, scale, primal):
    return _native_flash_fwd(q, k, v, scale)


def _native_grad_flash_bwd(scale, primal, res, dout):
    return _native_flash_bwd(scale, res, dout)


_native_grad_flash.defvjp(_native_grad_flash_fwd, _native_grad_flash_bwd)


def native_attention(q, k, v, *, scale: float, primal: Callable | None = None) -> jax.Array:
    """softmax(scale * q k^T) v on the C++ kernel (CPU only; check ``native_unsupported``
    first). Leading dims are broadcast (their gradients summed back by JAX).

    ``primal``: a function of (q, k, v) computing the same attention, run where the call is
    not differentiated; under ``jax.grad`` / ``jax.vjp`` the kernel runs forward and backward
    (reverse mode only, either way)."""
    batch = jnp.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q, k, v = (jnp.broadcast_to(a, batch + a.shape[-2:]) for a in (q, k, v))
    if primal is not None:
        return _native_grad_flash(q, k, v, float(scale), primal)
    return _native_flash(q, k, v, float(scale))
