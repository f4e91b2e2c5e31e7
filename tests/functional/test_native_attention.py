"""The C++ XLA:CPU FlashAttention kernel (attention(implementation="native"), and what "auto"
runs on the CPU for large unmasked float32 dot-product attention) against PyTorch's SDPA and
the pure-JAX paths: values, gradients, odd sizes, vmap, broadcasting, hard input, errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from attention_jax import _native
from attention_jax import functional as F
from tests.gradcheck import check_grads
from tests.parity import assert_close

RNG = np.random.default_rng(3)
NATIVE = {"implementation": "native"}


def _n(*shape, scale=1.0):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def _grads(f, q, k, v, cot):
    out, vjp = jax.vjp(f, jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    return (np.asarray(out), *(np.asarray(g) for g in vjp(jnp.asarray(cot))))


def test_kernel_is_built_where_the_cpu_allows():
    """Built wherever the library compiles AVX2 code (CI included): a machine that silently
    fell back would not test what users run."""
    assert _native.has("attention") == (_native.isa() != "generic"), _native.status()
    assert _native.has("attention")
    assert _native.isa() == _native.host_isa() or "ATTENTION_JAX_NATIVE_ISA" in os.environ


# Sizes that are not multiples of the kernel's blocks (64 queries, 256 keys, 16 columns):
# ragged query and key blocks, Dv with a half panel (24), a single query, more keys than one
# block. With fewer heads than the CPU pool's threads (CI: 2) the kernel splits each head's
# queries over tasks, the backward adding partial dK and dV: the last two shapes (one head of
# 130 queries, one of 200).
SHAPES = [((2, 3, 7, 8), (2, 3, 11, 8), 8, None), ((1, 2, 70, 16), (1, 2, 300, 16), 24, 0.3),
          ((3, 1, 16), (3, 513, 16), 16, None), ((1, 130, 32), (1, 257, 32), 40, 1.7),
          ((1, 1, 200, 64), (1, 1, 520, 64), 64, None)]


@pytest.mark.parametrize("qs,ks,dv,scale", SHAPES)
def test_native_matches_torch_sdpa(qs, ks, dv, scale):
    q, k, v = _n(*qs), _n(*ks), _n(*ks[:-1], dv)
    cot = _n(*qs[:-1], dv)
    qt, kt, vt = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, scale=scale)
    (out * torch.tensor(cot)).sum().backward()
    got = _grads(lambda q, k, v: F.attention(q, k, v, scale=scale, **NATIVE), q, k, v, cot)
    want = (out.detach().numpy(), qt.grad.numpy(), kt.grad.numpy(), vt.grad.numpy())
    for g, w, name in zip(got, want, ("out", "dq", "dk", "dv"), strict=True):
        assert_close(g, w, what=name)


@pytest.mark.parametrize("score", ["dot", "scaled_dot", "cosine"])
def test_native_equals_both_jax_paths(score):
    q, k, v = _n(2, 2, 65, 16), _n(2, 2, 260, 16), _n(2, 2, 260, 8)
    cot = _n(2, 2, 65, 8)
    res = {}
    for impl in ("native", "chunked", "xla"):
        f = lambda q, k, v, impl=impl: F.attention(q, k, v, score=score, temperature=0.5,
                                                   implementation=impl, q_chunk_size=32,
                                                   k_chunk_size=100)
        res[impl] = _grads(f, q, k, v, cot)
    for other in ("chunked", "xla"):
        for a, b, name in zip(res["native"], res[other], ("out", "dq", "dk", "dv"), strict=True):
            assert_close(a, b, what=f"{score} native vs {other}: {name}")


def test_check_grads_native():
    """Float32 kernel: finite differences in float32 with a step and tolerance to match."""
    q, k, v = (jnp.asarray(a) for a in (_n(2, 5, 8), _n(2, 9, 8), _n(2, 9, 8)))
    check_grads(lambda q, k, v: F.attention(q, k, v, **NATIVE), (q, k, v), order=1,
                modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


def test_native_jit_vmap_and_broadcast_leading_dims():
    q, k, v = _n(3, 4, 9, 8), _n(3, 1, 12, 8), _n(1, 4, 12, 16)  # k, v broadcast
    cot = _n(3, 4, 9, 16)
    f = lambda impl: lambda q, k, v: F.attention(q, k, v, implementation=impl)
    got, want = _grads(jax.jit(f("native")), q, k, v, cot), _grads(f("xla"), q, k, v, cot)
    for a, b, name in zip(got, want, ("out", "dq", "dk", "dv"), strict=True):
        assert a.shape == b.shape
        assert_close(a, b, what=f"broadcast {name}")
    # vmap over a leading axis (the kernel sees it as one more batch dim)
    vm = jax.vmap(f("native"))
    assert_close(vm(q, k[:, 0:1].repeat(4, 1), v[0:1].repeat(3, 0)),
                 f("xla")(q, k, v), what="vmap")
    g = jax.grad(lambda q: jnp.sum(jnp.sin(vm(q, q, q))))(jnp.asarray(q))
    g_ref = jax.grad(lambda q: jnp.sum(jnp.sin(jax.vmap(f("xla"))(q, q, q))))(jnp.asarray(q))
    assert_close(g, g_ref, what="vmap grad")


def test_auto_runs_native_on_cpu_when_it_applies():
    big = jax.ShapeDtypeStruct((32, 1024, 16), jnp.float32)  # 2**25 scores: auto -> blocked
    small = jax.ShapeDtypeStruct((1, 64, 16), jnp.float32)
    target = _native.attention_target("fwd")
    lowered = lambda f, s: jax.jit(f).lower(s, s, s).as_text()
    assert target in lowered(lambda q, k, v: F.attention(q, k, v), big)
    assert target not in lowered(lambda q, k, v: F.attention(q, k, v), small)  # direct path
    mask = jnp.ones((1024, 1024), bool)
    assert target not in lowered(lambda q, k, v: F.attention(q, k, v, mask=mask), big)
    assert target not in lowered(lambda q, k, v: F.attention(q, k, v, implementation="chunked"),
                                 big)
    # the gradient too
    grad_hlo = jax.jit(jax.grad(lambda q: jnp.sum(F.attention(q, q, q)))).lower(big).as_text()
    assert _native.attention_target("bwd") in grad_hlo


def test_native_large_logits_and_zero_vectors_finite():
    rng = np.random.default_rng(11)
    n = lambda *s, scale=1.0: (rng.normal(size=s) * scale).astype(np.float32)
    q, k, v = n(2, 33, 8, scale=40.0), n(2, 70, 8, scale=40.0), n(2, 70, 8)  # logits ~1e4
    cot = n(2, 33, 8)
    got = _grads(lambda q, k, v: F.attention(q, k, v, **NATIVE), q, k, v, cot)
    want = _grads(lambda q, k, v: F.attention(q, k, v, implementation="xla"), q, k, v, cot)
    # float32 scores ~1e4 carry absolute rounding ~1e-3, so the two paths' probabilities agree
    # to ~1e-3 relative: compare at that level (the point here is finiteness).
    for a, b, name in zip(got, want, ("out", "dq", "dk", "dv"), strict=True):
        assert np.isfinite(a).all()
        assert_close(a, b, rtol=1e-2, atol_rel=1e-2, what=f"large logits {name}")
    # One key far above the rest, last in its key block: the row max must see it.
    qd, kd = n(1, 9, 8), n(1, 263, 8)
    kd[0, 255] = 300.0 * qd[0, 0] / np.linalg.norm(qd[0, 0])
    out = F.attention(qd, kd, kd, **NATIVE)
    assert np.isfinite(np.asarray(out)).all()
    assert_close(out, F.attention(qd, kd, kd, implementation="xla"), rtol=1e-3, atol_rel=1e-3)
    q[0, :5] = 0.0
    k[1, :] = 0.0
    for score in ("scaled_dot", "cosine"):
        out = _grads(lambda q, k, v, s=score: F.attention(q, k, v, score=s, **NATIVE),
                     q, k, v, cot)
        assert all(np.isfinite(a).all() for a in out), score


@pytest.mark.parametrize("impl", ["native", "xla", "chunked"])
def test_empty_sizes(impl):
    """No queries, no keys (a zero output, as a fully masked row) or no batch, on every path
    (the JAX paths used to fail on Tk = 0 and the chunked one on Tq = 0)."""
    for qs, ks in (((2, 0, 8), (2, 5, 8)), ((2, 3, 8), (2, 0, 8)), ((0, 3, 8), (0, 5, 8))):
        q, k = jnp.ones(qs), jnp.ones(ks)
        v = jnp.ones(ks[:-1] + (16,))
        out, vjp = jax.vjp(lambda q, k, v: F.attention(q, k, v, implementation=impl), q, k, v)
        assert out.shape == qs[:-1] + (16,) and not np.asarray(out).any()
        grads = vjp(jnp.ones_like(out))
        assert all(g.shape == a.shape and not np.asarray(g).any()
                   for g, a in zip(grads, (q, k, v), strict=True))


@pytest.mark.parametrize("kw,match", [
    ({"mask": np.ones((7, 11), bool)}, "a mask or bias"),
    ({"bias": np.zeros((7, 11), np.float32)}, "a mask or bias"),
    ({"score": "additive", "score_params": {"w_q": np.ones((8, 4), np.float32),
                                            "w_k": np.ones((8, 4), np.float32),
                                            "v": np.ones(4, np.float32)}}, "score is not a dot"),
])
def test_native_rejects_what_it_cannot_run(kw, match):
    q, k, v = _n(7, 8), _n(11, 8), _n(11, 8)
    with pytest.raises(ValueError, match=r"attention: implementation must be 'auto', 'xla' or "
                       rf"'chunked' here.*got {match}"):
        F.attention(q, k, v, **kw, **NATIVE)


def test_native_rejects_dtype_and_head_dims(x64):
    q, k, v = _n(7, 8), _n(11, 8), _n(11, 8)
    with pytest.raises(ValueError, match=r"dtypes \['float64'\]"):
        F.attention(jnp.asarray(q, jnp.float64), jnp.asarray(k, jnp.float64),
                    jnp.asarray(v, jnp.float64), **NATIVE)
    with pytest.raises(ValueError, match=r"head dims D=8, Dv=5"):
        F.attention(q, k, v[:, :5], **NATIVE)
