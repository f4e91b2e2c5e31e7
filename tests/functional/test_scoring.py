"""QKV scoring: parity with torch SDPA, direct formulas, chunked == direct, NaN-safety, errors."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from attention_jax import functional as F
from attention_jax.functional import scoring as S
from tests.gradcheck import check_grads
from tests.parity import assert_close

RNG = np.random.default_rng(0)


def _n(*shape, scale=1.0):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


Q, K, V = _n(2, 3, 7, 8), _n(2, 3, 11, 8), _n(2, 3, 11, 5)
BOOL_MASK = RNG.random((2, 1, 7, 11)) > 0.3
BOOL_MASK[..., 0] = True  # no fully masked row (torch's math kernel would give NaN there)
ADD_MASK = _n(3, 7, 11)
CHUNKS = {"implementation": "chunked", "q_chunk_size": 4, "k_chunk_size": 3}


def _torch_sdpa(q, k, v, attn_mask=None, scale=None):
    qt, kt, vt = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    m = None if attn_mask is None else torch.tensor(attn_mask)
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=m, scale=scale)
    return out, (qt, kt, vt)


@pytest.mark.parametrize("impl", [{"implementation": "xla"}, CHUNKS])
@pytest.mark.parametrize("kind", ["none", "bool", "additive", "scale"])
def test_scaled_dot_parity_with_torch_sdpa(impl, kind):
    kw, tmask, scale = {}, None, None
    if kind == "bool":
        kw, tmask = {"mask": jnp.asarray(BOOL_MASK)}, BOOL_MASK
    elif kind == "additive":
        kw, tmask = {"bias": ADD_MASK}, ADD_MASK
    elif kind == "scale":
        kw, scale = {"scale": 0.3}, 0.3
    cot = _n(2, 3, 7, 5)
    out, ins = _torch_sdpa(Q, K, V, tmask, scale)
    (out * torch.tensor(cot)).sum().backward()

    def loss(q, k, v):
        return jnp.sum(F.attention(q, k, v, **kw, **impl) * cot)

    y = F.attention(Q, K, V, **kw, **impl)
    assert_close(y, out.detach().numpy(), what="forward")
    grads = jax.grad(loss, argnums=(0, 1, 2))(Q, K, V)
    for g, t, name in zip(grads, ins, "qkv", strict=True):
        assert_close(g, t.grad.numpy(), what=f"grad {name}")


def test_scores_against_direct_formulas():
    q, k = Q[0, 0], K[0, 0]
    np.testing.assert_allclose(F.dot_scores(q, k), q @ k.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(F.scaled_dot_scores(q, k), q @ k.T / np.sqrt(8), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(F.scaled_dot_scores(q, k, scale=2.0), 2 * q @ k.T, rtol=1e-5,
                               atol=1e-5)
    qn = q / np.linalg.norm(q, axis=-1, keepdims=True)
    kn = k / np.linalg.norm(k, axis=-1, keepdims=True)
    np.testing.assert_allclose(F.cosine_scores(q, k, temperature=0.5), qn @ kn.T / 0.5,
                               rtol=1e-5, atol=1e-5)
    w_q, w_k, vv, b = _n(8, 6), _n(8, 6), _n(6), _n(6)
    want = np.tanh((q @ w_q)[:, None, :] + (k @ w_k)[None, :, :] + b) @ vv
    np.testing.assert_allclose(F.additive_scores(q, k, w_q=w_q, w_k=w_k, v=vv, bias=b), want,
                               rtol=1e-5, atol=1e-5)
    # attention() with each score == softmax(score) @ v, written out.
    for score, s, extra in [("dot", q @ k.T, {}), ("cosine", qn @ kn.T / 0.5,
                                                   {"temperature": 0.5}),
                            ("additive", want, {"score_params": {"w_q": w_q, "w_k": w_k,
                                                                  "v": vv, "bias": b}})]:
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        np.testing.assert_allclose(F.attention(q, k, V[0, 0], score=score, **extra),
                                   p @ V[0, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(F.attend(F.attention_weights(q @ k.T), V[0, 0]),
                               F.attention(q, k, V[0, 0], score="dot"), rtol=1e-6, atol=1e-6)


def _additive_params(d=8, dk=8, a=6):
    return {"w_q": _n(d, a), "w_k": _n(dk, a), "v": _n(a), "bias": _n(a)}


CASES = {
    "scaled_dot": {},
    "dot_bool_mask": {"score": "dot", "mask": jnp.asarray(RNG.random((2, 1, 37, 53)) > 0.4)},
    "key_padding_mask": {"mask": jnp.asarray(RNG.random((2, 1, 1, 53)) > 0.3)},
    "query_mask": {"mask": jnp.asarray(RNG.random((37, 1)) > 0.3)},
    "bias_per_head": {"bias": jnp.asarray(_n(3, 37, 53))},
    "mask_and_bias": {"mask": jnp.asarray(RNG.random((2, 3, 37, 53)) > 0.5),
                      "bias": jnp.asarray(_n(53))},
    "cosine": {"score": "cosine", "temperature": 0.1},
    "additive": {"score": "additive", "score_params": _additive_params()},
    "callable": {"score": lambda a, b: -jnp.sum(jnp.abs(a[..., :, None, :] - b[..., None, :, :]),
                                                  -1)},
}


@pytest.mark.parametrize("case", list(CASES))
def test_chunked_equals_direct_odd_sizes(case):
    """Tq=37, Tk=53 with chunks 16/16 and 8/5: ragged last chunks, values and gradients."""
    kw = CASES[case]
    q, k, v = _n(2, 3, 37, 8), _n(2, 3, 53, 8), _n(2, 1, 53, 5)
    cot = _n(2, 3, 37, 5)
    arrays = {"q": q, "k": k, "v": v}
    if "bias" in kw:
        arrays["bias"] = kw["bias"]
    rest = {n: a for n, a in kw.items() if n != "bias"}

    def loss(arrs, **impl):
        out = F.attention(arrs["q"], arrs["k"], arrs["v"], bias=arrs.get("bias"), **rest,
                          **impl)
        return jnp.sum(out * cot), out

    (_, ref), g_ref = jax.value_and_grad(loss, has_aux=True)(arrays, implementation="xla")
    for qc, kc in [(16, 16), (8, 5)]:
        (_, out), g = jax.value_and_grad(loss, has_aux=True)(
            arrays, implementation="chunked", q_chunk_size=qc, k_chunk_size=kc)
        assert_close(out, ref, what=f"{case} forward {qc}/{kc}")
        for name in g_ref:
            assert_close(g[name], g_ref[name], what=f"{case} grad {name} {qc}/{kc}")


def test_chunked_heads_per_step_with_remainder(monkeypatch):
    """The flash path walks the flattened batch/head axis a few heads per step; 2 x 3 heads at
    4 per step leaves a ragged last step. Values and gradients (q, k, v, shared bias)."""
    from attention_jax.functional import _flash

    monkeypatch.setattr(_flash, "BLOCK_ELEMENTS", 4 * 8 * 5)
    q, k, v, bias, cot = _n(2, 3, 19, 8), _n(1, 3, 23, 8), _n(2, 3, 23, 4), _n(19, 23), _n(
        2, 3, 19, 4)

    def loss(q, k, v, bias, **kw):
        return jnp.sum(F.attention(q, k, v, bias=bias, **kw) * cot)

    ref = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias, implementation="xla")
    got = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias, implementation="chunked",
                                               q_chunk_size=8, k_chunk_size=5)
    for name, a, b in zip("q k v bias".split(), got, ref, strict=True):
        assert a.shape == b.shape
        assert_close(a, b, what=f"grad {name}")
    assert_close(F.attention(q, k, v, bias=bias, implementation="chunked", q_chunk_size=8,
                             k_chunk_size=5), F.attention(q, k, v, bias=bias))


def test_chunked_very_negative_logits():
    """Logits near -1e4 everywhere: the running max starts below -88 (exp would overflow if
    the empty state were taken as 0). Integer-valued q, k keep every logit exact in float32."""
    q, k = (RNG.integers(-2, 3, size=s).astype(np.float32) for s in ((2, 37, 8), (2, 53, 8)))
    v, bias = _n(2, 53, 5), jnp.full((37, 53), -1e4)

    def f(q, k, v, **kw):
        return F.attention(q, k, v, score="dot", bias=bias, **kw)

    ref = f(q, k, v, implementation="xla")
    out = f(q, k, v, implementation="chunked", q_chunk_size=8, k_chunk_size=5)
    assert bool(jnp.all(jnp.isfinite(out)))
    assert_close(out, ref)
    assert_close(out, F.attention(q, k, v, score="dot", implementation="xla"))
    g = jax.grad(lambda v: jnp.sum(f(q, k, v, implementation="chunked", q_chunk_size=8,
                                     k_chunk_size=5) ** 2))(v)
    assert_close(g, jax.grad(lambda v: jnp.sum(f(q, k, v, implementation="xla") ** 2))(v))


def test_chunked_does_not_materialise_scores():
    """The chunked backward holds no (Tq, Tk) array: check every intermediate's size."""
    q = jax.ShapeDtypeStruct((2, 512, 16), jnp.float32)

    def f(q, k, v):
        return jnp.sum(F.attention(q, k, v, implementation="chunked", q_chunk_size=64,
                                   k_chunk_size=64))

    jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(q, q, q)
    sizes = []

    def walk(jp):
        for eqn in jp.eqns:
            sizes.extend(int(np.prod(o.aval.shape)) for o in eqn.outvars)
            for p in eqn.params.values():
                for sub in (p if isinstance(p, (list, tuple)) else [p]):
                    if hasattr(sub, "jaxpr"):
                        walk(sub.jaxpr if hasattr(sub.jaxpr, "eqns") else sub.jaxpr.jaxpr)
                    elif hasattr(sub, "eqns"):
                        walk(sub)

    walk(jaxpr.jaxpr)
    assert max(sizes) < 512 * 512 // 4, max(sizes)  # the scores would be 2 * 512 * 512
    direct = jax.make_jaxpr(jax.grad(lambda q, k, v: jnp.sum(
        F.attention(q, k, v, implementation="xla")), argnums=(0, 1, 2)))(q, q, q)
    assert any(int(np.prod(o.aval.shape)) >= 2 * 512 * 512
               for e in direct.jaxpr.eqns for o in e.outvars)


def test_auto_switches_at_threshold():
    small = jax.ShapeDtypeStruct((1, 1024, 8), jnp.float32)  # 2**20 scores
    big = jax.ShapeDtypeStruct((32, 1024, 8), jnp.float32)  # 2**25 scores > threshold
    f = lambda q: F.attention(q, q, q)
    assert "scan" not in str(jax.make_jaxpr(f)(small))
    assert "scan" in str(jax.make_jaxpr(f)(big))
    assert S.CHUNKED_THRESHOLD == 2**24


def test_jax_nn_route_matches():
    """The helper ``auto`` uses on GPU (cuDNN) reshapes correctly: checked with its XLA path."""
    v8 = _n(2, 3, 11, 8)
    got = S._jax_nn_attention(Q, K, v8, scale=None, implementation="xla")
    assert_close(got, F.attention(Q, K, v8, implementation="xla"))


def test_batch_shared_bias_gradient_is_a_matmul_and_exact(x64):
    """A bias shared by the batch (a relative-position bias: (heads, Tq, Tk) on (N, heads, Tq,
    Tk) scores) is added so that its gradient, the sum over the batch, is one matmul with ones
    (XLA:CPU's own sum over leading axes runs at ~1 GB/s). Same values and derivatives, in both
    modes and to second order, as the plain broadcast add; vmap over a further batch axis."""
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(rng.standard_normal(s)) for s in ((3, 2, 5, 4), (3, 2, 7, 4),
                                                             (3, 2, 7, 3)))
    bias = jnp.asarray(rng.standard_normal((2, 5, 7)))
    f = lambda q, k, v, b: F.attention(q, k, v, bias=b, implementation="xla")
    check_grads(f, (q, k, v, bias), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)

    def plain(q, k, v, b):  # the same attention with the bias added by broadcasting
        s = jnp.einsum("...qd,...kd->...qk", q, k) / 2.0 + b
        return jnp.einsum("...qk,...kd->...qd", jax.nn.softmax(s, -1), v)

    cot = jnp.asarray(rng.standard_normal((3, 2, 5, 3)))
    got = jax.grad(lambda *a: jnp.sum(f(*a) * cot), argnums=(0, 1, 2, 3))(q, k, v, bias)
    want = jax.grad(lambda *a: jnp.sum(plain(*a) * cot), argnums=(0, 1, 2, 3))(q, k, v, bias)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    t = jax.jvp(f, (q, k, v, bias), (q, k, v, bias))[1]
    np.testing.assert_allclose(t, jax.jvp(plain, (q, k, v, bias), (q, k, v, bias))[1],
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax.vmap(f, (0, 0, 0, None))(q[None], k[None], v[None], bias)[0],
                               f(q, k, v, bias), rtol=1e-12, atol=1e-12)
    text = jax.jit(jax.grad(lambda b: jnp.sum(f(q, k, v, b) * cot))).lower(bias).as_text()
    # the batch sum: the (3, 70) cotangent (either way round) against a vector of 3 ones
    assert re.search(r"dot_general.*tensor<(3x70|70x3)xf64>, tensor<3xf64>\) -> tensor<70xf64>",
                     text)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_check_grads_attention(x64, impl):
    q, k, v = (jnp.asarray(a, jnp.float64) for a in (_n(2, 5, 4), _n(2, 7, 4), _n(2, 7, 3)))
    mask = jnp.asarray(RNG.random((5, 7)) > 0.3).at[:, 0].set(True)
    bias = jnp.asarray(_n(5, 7), jnp.float64)
    f = lambda q, k, v, b: F.attention(q, k, v, mask=mask, bias=b, implementation=impl,
                                       q_chunk_size=2, k_chunk_size=3)
    check_grads(f, (q, k, v, bias), order=2 if impl == "xla" else 1, modes=["rev"], atol=1e-5,
                rtol=1e-5)
    f2 = lambda q, k, v: F.attention(q, k, v, score="cosine", implementation=impl,
                                     q_chunk_size=2, k_chunk_size=3)
    check_grads(f2, (q, k, v), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_check_grads_pieces(x64):
    q, k = (jnp.asarray(a, jnp.float64) for a in (_n(5, 4), _n(7, 4)))
    p = {n: jnp.asarray(a, jnp.float64) for n, a in _additive_params(4, 4, 3).items()}
    mask = jnp.asarray(RNG.random((5, 7)) > 0.3).at[2].set(False)  # row 2 fully masked
    check_grads(lambda s: F.attention_weights(s, mask=mask), (jnp.asarray(_n(5, 7),
                                                                         jnp.float64),),
                order=2, atol=1e-5, rtol=1e-5)
    check_grads(F.dot_scores, (q, k), order=2)
    check_grads(lambda q, k: F.scaled_dot_scores(q, k, scale=0.7), (q, k), order=2)
    check_grads(lambda q, k: F.cosine_scores(q, k, temperature=0.3), (q, k), order=2,
                atol=1e-4, rtol=1e-4)
    check_grads(lambda q, k, a, b, c, d: F.additive_scores(q, k, w_q=a, w_k=b, v=c, bias=d),
                (q, k, p["w_q"], p["w_k"], p["v"], p["bias"]), order=1, atol=1e-5, rtol=1e-5)
    check_grads(F.attend, (jnp.asarray(_n(5, 7), jnp.float64),
                           jnp.asarray(_n(7, 3), jnp.float64)), order=2)


def test_jit_and_vmap_invariance():
    f = lambda q, k, v: F.attention(q, k, v, mask=BOOL_MASK[0, 0])
    y = f(Q[0], K[0], V[0])
    np.testing.assert_allclose(jax.jit(f)(Q[0], K[0], V[0]), y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(f)(Q[0], K[0], V[0]), y, rtol=1e-6, atol=1e-6)
    g = lambda q, k, v: F.attention(q, k, v, implementation="chunked", q_chunk_size=3,
                                    k_chunk_size=4)
    np.testing.assert_allclose(jax.vmap(g)(Q[0], K[0], V[0]), g(Q[0], K[0], V[0]),
                               rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- numerically hard input


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_fully_masked_rows_zero_and_finite_grads(impl):
    mask = np.ones((7, 11), bool)
    mask[2] = False
    mask[5, :4] = False
    kw = {"mask": jnp.asarray(mask), "implementation": impl, "q_chunk_size": 3,
          "k_chunk_size": 4}
    y = F.attention(Q, K, V, **kw)
    assert bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(np.asarray(y[..., 2, :]), 0.0)
    grads = jax.grad(lambda q, k, v: jnp.sum(F.attention(q, k, v, **kw) ** 2),
                     argnums=(0, 1, 2))(Q, K, V)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    np.testing.assert_array_equal(np.asarray(grads[0][..., 2, :]), 0.0)
    # -inf in an additive bias masks too; a fully -inf row gives zeros, not NaN.
    bias = jnp.where(jnp.asarray(mask), 0.0, -jnp.inf)
    yb = F.attention(Q, K, V, bias=bias, implementation=impl, q_chunk_size=3, k_chunk_size=4)
    np.testing.assert_allclose(yb, y, rtol=1e-6, atol=1e-6)
    w = F.attention_weights(jnp.asarray(_n(7, 11)), mask=jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(w[2]), 0.0)
    np.testing.assert_allclose(np.asarray(w.sum(-1))[[0, 1, 3, 4, 5, 6]], 1.0, rtol=1e-6)
    gw = jax.grad(lambda s: jnp.sum(F.attention_weights(s, mask=jnp.asarray(mask)) ** 2))(
        jnp.asarray(_n(7, 11)))
    assert bool(jnp.all(jnp.isfinite(gw)))


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_cosine_zero_vectors_finite(impl):
    q, k = Q.copy(), K.copy()
    q[..., 1, :] = 0.0
    k[..., 3, :] = 0.0
    s = F.cosine_scores(q, k)
    assert bool(jnp.all(jnp.isfinite(s)))
    np.testing.assert_array_equal(np.asarray(s[..., 1, :]), 0.0)
    kw = {"score": "cosine", "implementation": impl, "q_chunk_size": 3, "k_chunk_size": 4}
    grads = jax.grad(lambda q, k, v: jnp.sum(F.attention(q, k, v, **kw) ** 2),
                     argnums=(0, 1, 2))(q, k, V)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    gs = jax.grad(lambda q, k: jnp.sum(F.cosine_scores(q, k)), argnums=(0, 1))(q, k)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in gs)


def _large_logit_case():
    """Logits ~1e4 that still spread over several keys (softmax not one-hot).

    Every key shares 7 large coordinates (integers 30..45, queries 35 there: a common logit
    ~9e3); the 8th (multiples of 0.25 times a query value ~N(0, 2)) spreads the logits by
    O(10). All values are exact in bf16 and fp16.
    """
    rng = np.random.default_rng(7)
    q = np.full((2, 7, 8), 35.0, np.float32)
    q[..., -1] = rng.normal(size=(2, 7)) * 2
    k0 = rng.integers(30, 46, size=(2, 1, 7)).astype(np.float32)
    k = np.concatenate([np.broadcast_to(k0, (2, 11, 7)),
                        rng.integers(-8, 9, size=(2, 11, 1)) * 0.25], -1).astype(np.float32)
    v = (rng.normal(size=(2, 11, 5)) * 100).astype(np.float32)
    return q, k, v


def _softmax_attention_f64(q, k, v):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2)
    e = np.exp(s - s.max(-1, keepdims=True))
    w = e / e.sum(-1, keepdims=True)
    return w @ v, s, w


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_low_precision_large_logits_finite(dtype, impl):
    """Logits ~1e4 in bf16/fp16: finite, and within the dtype's rounding of a float64 softmax.

    The reference runs in float64 on the same (rounded) inputs. Rounding the weights and the
    output to the dtype costs at most about eps * max|v| (eps = 2^-7 bf16, 2^-10 fp16).
    """
    q, k, v = _large_logit_case()
    kw = {"score": "dot", "implementation": impl, "q_chunk_size": 3, "k_chunk_size": 4}
    lo = [jnp.asarray(a, dtype) for a in (q, k, v)]
    y = F.attention(*lo, **kw)
    assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y)))
    ref, s, w = _softmax_attention_f64(*lo)
    assert np.abs(s).max() > 8e3 and (w.max(-1) < 0.9).mean() > 0.5  # large logits, mixed
    scale = float(np.abs(np.asarray(v, np.float64)).max())
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=0,
                               atol=float(jnp.finfo(dtype).eps) * scale)
    grads = jax.grad(lambda *a: jnp.sum(F.attention(*a, **kw).astype(jnp.float32)),
                     argnums=(0, 1, 2))(*lo)
    assert all(g.dtype == dtype and bool(jnp.all(jnp.isfinite(g))) for g in grads)
    s = jnp.asarray(_n(7, 11, scale=1e4), dtype)
    w = F.attention_weights(s)
    assert w.dtype == dtype and bool(jnp.all(jnp.isfinite(w)))
    np.testing.assert_allclose(np.asarray(w, np.float32).sum(-1), 1.0, rtol=1e-2)


# ---------------------------------------------------------------- bad input


def test_bad_mismatched_d():
    with pytest.raises(ValueError, match=r"attention: k must be the feature size D=8"):
        F.attention(Q, _n(2, 3, 11, 6), V)
    with pytest.raises(ValueError, match=r"dot_scores: k must be the feature size D=8"):
        F.dot_scores(Q, _n(11, 6))


def test_bad_mismatched_tk():
    with pytest.raises(ValueError, match=r"attention: v must be Tk=11 tokens on axis -2"):
        F.attention(Q, K, _n(2, 3, 10, 5))
    with pytest.raises(ValueError, match=r"attend: v must be Tk=11 tokens"):
        F.attend(jnp.ones((7, 11)), _n(10, 5))


def test_bad_mask_not_broadcastable():
    with pytest.raises(ValueError, match=r"attention: mask must be broadcastable to the "
                       r"scores' shape \(2, 3, 7, 11\), got shape \(7, 10\)"):
        F.attention(Q, K, V, mask=jnp.ones((7, 10), bool))
    with pytest.raises(ValueError, match=r"attention_weights: mask must be broadcastable"):
        F.attention_weights(jnp.ones((7, 11)), mask=jnp.ones((3, 7, 11), bool))


def test_bad_bias_not_broadcastable():
    with pytest.raises(ValueError, match=r"attention: bias must be broadcastable"):
        F.attention(Q, K, V, bias=jnp.ones((4, 7, 11)))


def test_bad_mask_dtype():
    with pytest.raises(ValueError, match=r"attention: mask must be a boolean array"):
        F.attention(Q, K, V, mask=jnp.ones((7, 11)))


def test_bad_unknown_score():
    with pytest.raises(ValueError, match=r"attention: score must be one of 'dot', "
                       r"'scaled_dot', 'cosine', 'additive', got 'bilinear'"):
        F.attention(Q, K, V, score="bilinear")


def test_bad_additive_params():
    with pytest.raises(ValueError, match=r"attention: score_params must be a mapping with "
                       r"keys 'w_q', 'w_k', 'v'"):
        F.attention(Q, K, V, score="additive")
    with pytest.raises(ValueError, match=r"additive_scores: w_k must be shape \(D_k=8, A=6\)"):
        F.additive_scores(Q, K, w_q=_n(8, 6), w_k=_n(8, 5), v=_n(6))


def test_bad_implementation_and_chunks():
    with pytest.raises(ValueError, match=r"attention: implementation must be one of 'auto', "
                       r"'xla', 'chunked', 'native', got 'flash'"):
        F.attention(Q, K, V, implementation="flash")
    with pytest.raises(ValueError, match=r"attention: q_chunk_size must be an integer >= 1"):
        F.attention(Q, K, V, q_chunk_size=0)


def test_bad_rank_dtype_temperature():
    with pytest.raises(ValueError, match=r"attention: q must be at least rank 2"):
        F.attention(jnp.ones(8), K, V)
    with pytest.raises(ValueError, match=r"attention: q must be a floating-point array"):
        F.attention(jnp.ones((7, 8), jnp.int32), K[0, 0], V[0, 0])
    with pytest.raises(ValueError, match=r"cosine_scores: temperature must be a positive"):
        F.cosine_scores(Q, K, temperature=0.0)
    with pytest.raises(ValueError, match=r"attention: k must be leading \(batch/head\) dims"):
        F.attention(Q, _n(4, 3, 11, 8), V)


@pytest.mark.parametrize("impl", ["xla", "chunked", "native", "auto"])
@pytest.mark.parametrize("score", ["scaled_dot", "dot", "cosine"])
def test_bad_zero_head_dim(impl, score):
    """D = 0: a ValueError (was 1 / sqrt(0)'s ZeroDivisionError) on every implementation."""
    q, k, v = jnp.ones((2, 4, 0)), jnp.ones((2, 5, 0)), jnp.ones((2, 5, 8))
    with pytest.raises(ValueError, match=r"attention: q must be a feature size D >= 1 on its "
                       r"last axis, got shape \(2, 4, 0\)"):
        F.attention(q, k, v, score=score, implementation=impl)
    with pytest.raises(ValueError, match=r"scaled_dot_scores: q must be a feature size D >= 1"):
        F.scaled_dot_scores(q, k)


def test_attention_weights_no_keys():
    """Tk = 0: empty weights (``jnp.max`` over no keys raised a raw ValueError)."""
    w = F.attention_weights(jnp.zeros((2, 3, 0), jnp.bfloat16),
                            mask=jnp.zeros((2, 3, 0), bool))
    assert w.shape == (2, 3, 0) and w.dtype == jnp.bfloat16
