"""The CPU-specific paths of ``attention``: the guard-free direct softmax and the mid-size
native routes of ``implementation="auto"`` (``scoring.CPU_NATIVE_GRAD_THRESHOLD``,
``CPU_DIRECT_FORWARD_MIN`` and ``CPU_NATIVE_THRESHOLD``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from attention_jax import _native
from attention_jax import functional as F
from attention_jax.functional import scoring as S
from tests.parity import assert_close

RNG = np.random.default_rng(3)


def _n(*shape):
    return jnp.asarray(RNG.standard_normal(shape).astype(np.float32))


def _selects(fn, *args) -> int:
    return str(jax.make_jaxpr(fn)(*args)).count("select_n")


@pytest.mark.parametrize("score", ["dot", "scaled_dot", "cosine"])
def test_direct_dot_scores_have_no_guards_and_match_torch(score):
    # No select in the direct path of dot-product scores without mask or bias: XLA:CPU fuses
    # the whole attention into one YNNPACK subgraph only then.
    q, k, v = _n(2, 3, 20, 8), _n(2, 3, 24, 8), _n(2, 3, 24, 5)
    f = lambda q, k, v: F.attention(q, k, v, score=score, implementation="xla")
    assert _selects(f, q, k, v) == 0
    qt, kt, vt = (torch.from_numpy(np.array(a)).requires_grad_(True) for a in (q, k, v))
    if score == "cosine":
        qt2 = torch.nn.functional.normalize(qt, dim=-1, eps=1e-6)
        kt2 = torch.nn.functional.normalize(kt, dim=-1, eps=1e-6)
        ref = torch.nn.functional.scaled_dot_product_attention(qt2, kt2, vt, scale=1.0)
    else:
        ref = torch.nn.functional.scaled_dot_product_attention(
            qt, kt, vt, scale=None if score == "scaled_dot" else 1.0)
    assert_close(f(q, k, v), ref.detach().numpy())
    ct = _n(2, 3, 20, 5)
    grads = jax.vjp(f, q, k, v)[1](ct)
    ref.backward(torch.from_numpy(np.array(ct)))
    for g, t in zip(grads, (qt, kt, vt), strict=True):
        assert_close(g, t.grad.numpy())


def test_guards_stay_with_mask_bias_or_callable_scores():
    q = _n(1, 6, 4)
    mask = jnp.ones((6, 6), bool).at[2].set(False)  # one fully masked row
    assert _selects(lambda q: F.attention(q, q, q, mask=mask, implementation="xla"), q) > 0
    bias = jnp.zeros((6, 6)).at[3].set(-jnp.inf)  # one fully -inf row
    out = F.attention(q, q, q, bias=bias, implementation="xla")
    assert bool(jnp.all(out[:, 3] == 0)) and bool(jnp.all(jnp.isfinite(out)))
    neg_inf = lambda a, b: jnp.full(a.shape[:-1] + b.shape[-2:-1], -jnp.inf)  # all -inf scores
    out = F.attention(q, q, q, score=neg_inf, implementation="xla")
    assert bool(jnp.all(out == 0))


def test_direct_huge_logits_finite():
    # bf16 inputs with |x| ~ 1e4: scores ~1e9 in float32, still finite -> finite softmax.
    q = (_n(2, 16, 8) * 1e4).astype(jnp.bfloat16)
    out = F.attention(q, q, q, implementation="xla")
    assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
    g = jax.grad(lambda q: jnp.sum(F.attention(q, q, q, implementation="xla")
                                   .astype(jnp.float32)))(q)
    assert bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))


def test_auto_takes_native_on_cpu_between_the_thresholds():
    assert S.CPU_NATIVE_THRESHOLD < S.CHUNKED_THRESHOLD
    mid = jax.ShapeDtypeStruct((8, 8, 320, 16), jnp.float32)  # 6.6M scores
    assert S.CPU_NATIVE_THRESHOLD < 8 * 8 * 320 * 320 <= S.CHUNKED_THRESHOLD
    band = jax.ShapeDtypeStruct((2, 8, 256, 16), jnp.float32)  # 1M: the direct forward
    assert S.CPU_DIRECT_FORWARD_MIN < 2 * 8 * 256 * 256 <= S.CPU_NATIVE_THRESHOLD
    f = lambda q, k, v: F.attention(q, k, v)
    target = _native.attention_target("fwd")
    assert target in jax.jit(f).lower(mid, mid, mid).as_text()
    assert target not in jax.jit(f).lower(band, band, band).as_text()
    grad = jax.jit(jax.grad(lambda q: jnp.sum(f(q, q, q)))).lower(mid).as_text()
    assert _native.attention_target("bwd") in grad
    # GPU/TPU keep the direct path (no custom call, no loop)
    for platform in ("cuda", "tpu"):
        text = jax.export.export(jax.jit(f), platforms=[platform])(mid, mid, mid).mlir_module()
        assert "custom_call" not in text and "while" not in text, platform
    # and the values agree with the direct path
    q, k, v = _n(8, 8, 320, 16), _n(8, 8, 320, 16), _n(8, 8, 320, 16)
    assert_close(jax.jit(f)(q, k, v), F.attention(q, k, v, implementation="xla"))


def test_auto_differentiated_takes_the_kernel_in_the_direct_forward_band():
    # Between CPU_DIRECT_FORWARD_MIN and CPU_NATIVE_THRESHOLD: the direct path's value, the
    # kernel's forward and backward under differentiation; below CPU_NATIVE_GRAD_THRESHOLD,
    # the direct path both ways.
    assert 0 < S.CPU_NATIVE_GRAD_THRESHOLD <= S.CPU_DIRECT_FORWARD_MIN < S.CPU_NATIVE_THRESHOLD
    mid, tiny = (8, 2, 256, 16), (1, 2, 64, 16)
    assert S.CPU_DIRECT_FORWARD_MIN < 8 * 2 * 256 * 256 <= S.CPU_NATIVE_THRESHOLD
    assert 2 * 64 * 64 < S.CPU_NATIVE_GRAD_THRESHOLD
    f = lambda q, k, v: F.attention(q, k, v, score="scaled_dot")
    fwd, bwd = _native.attention_target("fwd"), _native.attention_target("bwd")
    for shape, native in ((mid, True), (tiny, False)):
        spec = jax.ShapeDtypeStruct(shape, jnp.float32)
        assert fwd not in jax.jit(f).lower(spec, spec, spec).as_text()
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) ** 2), (0, 1, 2)))
        text = grad.lower(spec, spec, spec).as_text()
        assert (fwd in text and bwd in text) == native, shape
    q, k, v, ct = _n(*mid), _n(*mid), _n(*mid), _n(*mid)
    direct = lambda q, k, v: F.attention(q, k, v, score="scaled_dot", implementation="xla")
    np.testing.assert_array_equal(jax.jit(f)(q, k, v), jax.jit(direct)(q, k, v))
    qt, kt, vt = (torch.from_numpy(np.array(a)).requires_grad_(True) for a in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
    ref.backward(torch.from_numpy(np.array(ct)))
    out, pullback = jax.vjp(f, q, k, v)
    assert_close(out, ref.detach().numpy())
    for g, t in zip(jax.jit(pullback)(ct), (qt, kt, vt), strict=True):
        assert_close(g, t.grad.numpy())
    # reverse mode only there; "xla", or "auto" inside native_disabled(), takes forward mode
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(f, (q, k, v), (ct, ct, ct))
    want = jax.jvp(direct, (q, k, v), (ct, ct, ct))[1]
    with _native.native_disabled():
        assert_close(jax.jvp(f, (q, k, v), (ct, ct, ct))[1], want)


def test_auto_takes_the_kernel_both_ways_from_the_grad_threshold_to_the_band():
    # From CPU_NATIVE_GRAD_THRESHOLD (inclusive) to CPU_DIRECT_FORWARD_MIN: the kernel's
    # forward even when not differentiated (the direct path's fixed costs dominate there),
    # and its backward; one element fewer stays direct.
    lo, hi = S.CPU_NATIVE_GRAD_THRESHOLD, S.CPU_DIRECT_FORWARD_MIN
    small, below = (1, 1, 256, 64), (1, 1, 255, 64)  # 65,536 and 65,025 score elements
    assert 255 * 255 < lo == 256 * 256 <= hi
    f = lambda q, k, v: F.attention(q, k, v)
    fwd, bwd = _native.attention_target("fwd"), _native.attention_target("bwd")
    for shape, native in ((small, True), (below, False)):
        spec = jax.ShapeDtypeStruct(shape, jnp.float32)
        assert (fwd in jax.jit(f).lower(spec, spec, spec).as_text()) == native, shape
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) ** 2), (0, 1, 2)))
        text = grad.lower(spec, spec, spec).as_text()
        assert (fwd in text and bwd in text) == native, shape
    top = jax.ShapeDtypeStruct((8, 1, 256, 64), jnp.float32)  # exactly CPU_DIRECT_FORWARD_MIN
    assert 8 * 256 * 256 == hi and fwd in jax.jit(f).lower(top, top, top).as_text()
    q, k, v, ct = _n(*small), _n(*small), _n(*small), _n(*small)
    qt, kt, vt = (torch.from_numpy(np.array(a)).requires_grad_(True) for a in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
    ref.backward(torch.from_numpy(np.array(ct)))
    out, pullback = jax.vjp(jax.jit(f), q, k, v)
    assert_close(out, ref.detach().numpy())
    for g, t in zip(pullback(ct), (qt, kt, vt), strict=True):
        assert_close(g, t.grad.numpy())
    # reverse mode only; inside native_disabled() forward mode takes the direct path
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(f, (q, k, v), (ct, ct, ct))
    direct = lambda q, k, v: F.attention(q, k, v, implementation="xla")
    with _native.native_disabled():
        assert_close(jax.jvp(f, (q, k, v), (ct, ct, ct))[1],
                     jax.jvp(direct, (q, k, v), (ct, ct, ct))[1])


def _dot_batch_dims(fn, *args) -> list[int]:
    eqns = jax.make_jaxpr(fn)(*args).jaxpr.eqns
    return [len(e.params["dimension_numbers"][1][0]) for e in eqns
            if e.primitive.name == "dot_general"]


@pytest.mark.parametrize("score", ["dot", "scaled_dot", "cosine"])
def test_direct_flattens_shared_leading_dims_into_one_batch_axis(score):
    # XLA:CPU runs the fused attention with several batch axes, one of size 1, 2-5x slower:
    # the direct path's dots get one batch axis, values and gradients as PyTorch's.
    q, k, v, ct = _n(2, 1, 3, 20, 8), _n(2, 1, 3, 24, 8), _n(2, 1, 3, 24, 5), _n(2, 1, 3, 20, 5)
    f = lambda q, k, v: F.attention(q, k, v, score=score, implementation="xla")
    assert _dot_batch_dims(f, q, k, v) == [1, 1]
    backward = _dot_batch_dims(lambda q, k, v: jax.vjp(f, q, k, v)[1](ct), q, k, v)
    assert len(backward) >= 4 and set(backward) == {1}
    qt, kt, vt = (torch.from_numpy(np.array(a)).requires_grad_(True) for a in (q, k, v))
    if score == "cosine":
        ref = torch.nn.functional.scaled_dot_product_attention(
            torch.nn.functional.normalize(qt, dim=-1, eps=1e-6),
            torch.nn.functional.normalize(kt, dim=-1, eps=1e-6), vt, scale=1.0)
    else:
        ref = torch.nn.functional.scaled_dot_product_attention(
            qt, kt, vt, scale=None if score == "scaled_dot" else 1.0)
    out, pullback = jax.vjp(f, q, k, v)
    assert out.shape == (2, 1, 3, 20, 5)
    assert_close(out, ref.detach().numpy())
    ref.backward(torch.from_numpy(np.array(ct)))
    for g, t in zip(pullback(ct), (qt, kt, vt), strict=True):
        assert_close(g, t.grad.numpy())


def test_direct_keeps_leading_dims_when_they_differ_or_the_score_is_a_callable():
    # Broadcast leading dims (k, v shared over q's first axis) stay broadcast (einsum's
    # own handling), and a callable score sees the caller's leading dims (it may hold
    # per-head parameters).
    q, k, v = _n(2, 3, 20, 8), _n(1, 3, 24, 8), _n(1, 3, 24, 5)
    f = lambda q, k, v: F.attention(q, k, v, implementation="xla")
    assert "f32[2,3,24," not in str(jax.make_jaxpr(f)(q, k, v))  # k, v never at full batch
    kb, vb = jnp.broadcast_to(k, (2, 3, 24, 8)), jnp.broadcast_to(v, (2, 3, 24, 5))
    assert_close(f(q, k, v), f(q, kb, vb))
    per_head = _n(3, 1, 1)
    seen = []

    def score(a, b):
        seen.append(a.shape)
        return jnp.einsum("...qd,...kd->...qk", a, b) * per_head
    q4 = _n(2, 3, 20, 8)
    out = F.attention(q4, kb, vb, score=score, implementation="xla")
    assert seen and all(len(s) == 4 for s in seen) and out.shape == (2, 3, 20, 5)
