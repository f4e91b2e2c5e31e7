"""PFANet: ContextAwarePyramid (registry ``pfa``), PyramidSpatialAttention and the
PyramidFeatureAttention head: parity with PyTorch, linen == nnx, jit/grad, bad input, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax import linen as L
from attention_jax import load_linen_variables
from attention_jax import nnx as N
from attention_jax.torch_reference import saliency as R
from tests.parity import (
    assert_close,
    check_linen_equals_nnx,
    check_module_parity,
    jax_to_torch_state,
    load_into_torch,
    nchw_to_nhwc,
    nhwc_to_nchw,
    randomize_batch_stats,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 9, 8, 16)).astype(np.float32)
LOW = RNG.normal(size=(2, 12, 10, 6)).astype(np.float32)
HIGH = RNG.normal(size=(2, 6, 5, 12)).astype(np.float32)


@pytest.mark.parametrize("kw,rd", [({}, 8), ({"rd_ratio": 0.25, "rd_divisor": 1}, 4),
                                   ({"out_channels": 24, "dilations": (1, 2)}, 8),
                                   ({"channel_attention": False}, 8)])
def test_context_aware_pyramid_parity_and_nnx(kw, rd):
    m = L.ContextAwarePyramid(16, **kw)
    ref_kw = {k: v for k, v in kw.items() if k in ("dilations", "channel_attention")}
    ref = R.ContextAwarePyramid(16, kw.get("out_channels"), rd_channels=rd, **ref_kw)
    v = check_module_parity(m, ref, X)
    check_linen_equals_nnx(m, N.ContextAwarePyramid(16, **kw, rngs=nnx.Rngs(1)), X, v)


@pytest.mark.parametrize("k,mid", [(9, None), (3, 5)])
def test_spatial_attention_parity_and_nnx(k, mid):
    m = L.PyramidSpatialAttention(16, kernel_size=k, mid_channels=mid)
    v = check_module_parity(m, R.PyramidSpatialAttention(16, kernel_size=k, mid_channels=mid), X)
    n = N.PyramidSpatialAttention(16, kernel_size=k, mid_channels=mid, rngs=nnx.Rngs(1))
    check_linen_equals_nnx(m, n, X, v)


def test_spatial_attention_guide():
    """The map comes from ``guide`` and rescales ``x`` (PFANet: high guides low)."""
    m = L.PyramidSpatialAttention(16, kernel_size=3)
    v = randomize_batch_stats(dict(m.init(jax.random.key(0), X)), jax.random.key(1))
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 9, 8, 5)), jnp.float32)
    y = m.apply(v, x, guide=X)
    ref = R.PyramidSpatialAttention(16, kernel_size=3)
    load_into_torch(ref, v)
    ref.eval()
    assert_close(y, nchw_to_nhwc(ref(nhwc_to_nchw(x), nhwc_to_nchw(X))))
    n = N.PyramidSpatialAttention(16, kernel_size=3, rngs=nnx.Rngs(0))
    load_linen_variables(n, v)
    n.eval()
    np.testing.assert_allclose(np.asarray(n(x, guide=jnp.asarray(X))), np.asarray(y), rtol=1e-6,
                               atol=1e-6)


def _head(api="linen", **kw):
    kw = {"features": 4, "mid_channels": 8, "kernel_size": 3, **kw}
    if api == "linen":
        return L.PyramidFeatureAttention(6, 12, **kw)
    return N.PyramidFeatureAttention(6, 12, **kw, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("high_shape", [(2, 6, 5, 12), (2, 12, 10, 12)])
def test_head_parity_forward_and_grads(high_shape):
    m = _head()
    r = np.random.default_rng(7)
    low, high = jnp.asarray(LOW), jnp.asarray(r.normal(size=high_shape), jnp.float32)
    v = randomize_batch_stats(dict(m.init(jax.random.key(0), low, high)), jax.random.key(1))
    ref = R.PyramidFeatureAttention(6, 12, features=4, mid_channels=8, kernel_size=3,
                                    rd_channels=8)
    load_into_torch(ref, v)
    ref.eval()
    y = m.apply(v, low, high)
    assert y.shape == (2, 12, 10, 1)
    cot = jax.random.normal(jax.random.key(2), y.shape)

    def loss(p, lo, hi):
        return jnp.sum(m.apply({**v, "params": p}, lo, hi) * cot)

    gp, gl, gh = jax.grad(loss, argnums=(0, 1, 2))(v["params"], low, high)
    lt = nhwc_to_nchw(low).requires_grad_(True)
    ht = nhwc_to_nchw(high).requires_grad_(True)
    yt = ref(lt, ht)
    tol = {"rtol": 1e-4, "atol_rel": 1e-5}  # as the registry contract: ~1e-5 of the scale
    assert_close(y, nchw_to_nhwc(yt), what="forward", **tol)
    (yt * nhwc_to_nchw(cot)).sum().backward()
    assert_close(gl, nchw_to_nhwc(lt.grad), what="grad low", **tol)
    assert_close(gh, nchw_to_nhwc(ht.grad), what="grad high", **tol)
    named = dict(ref.named_parameters())
    grads = jax_to_torch_state(gp)
    assert set(grads) == set(named)
    for k, g in grads.items():
        assert_close(g, named[k].grad.numpy(), what=k, **tol)
    n = _head("nnx")
    load_linen_variables(n, v)
    n.eval()
    np.testing.assert_allclose(np.asarray(n(low, high)), np.asarray(y), rtol=1e-6, atol=1e-6)


def test_head_identity_gate_gives_logits_and_jit():
    m, lg = _head(), _head(gate="identity")
    low, high = jnp.asarray(LOW), jnp.asarray(HIGH)
    v = m.init(jax.random.key(0), low, high)
    y = jax.jit(m.apply)(v, low, high)
    logits = lg.apply(v, low, high)
    np.testing.assert_allclose(y, jax.nn.sigmoid(logits), rtol=1e-5, atol=1e-6)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("name", ["ContextAwarePyramid", "PyramidSpatialAttention"])
def test_jit_grad_vmap(name):
    m = getattr(L, name)(16)
    v = m.init(jax.random.key(0), X)
    y = m.apply(v, X)
    np.testing.assert_allclose(jax.jit(m.apply)(v, X), y, rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda p: m.apply({**v, "params": p}, X).sum())(v["params"])
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g))
    yv = jax.vmap(lambda a: m.apply(v, a[None])[0])(X)
    np.testing.assert_allclose(yv, y, rtol=1e-5, atol=1e-5)


def test_train_mode_linen_equals_nnx():
    m = L.ContextAwarePyramid(16)
    v = m.init(jax.random.key(0), X)
    y, _ = m.apply(v, X, train=True, mutable=["batch_stats"])
    n = N.ContextAwarePyramid(16, rngs=nnx.Rngs(0))
    load_linen_variables(n, v)
    n.train()
    np.testing.assert_allclose(np.asarray(n(jnp.asarray(X))), np.asarray(y), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_large_values_finite(dtype):
    x = (jnp.asarray(X) * 1e4).astype(dtype)
    for m in (L.ContextAwarePyramid(16, dtype=dtype), L.PyramidSpatialAttention(16, dtype=dtype)):
        y = m.apply(m.init(jax.random.key(0), x), x)
        assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y)))
    low, high = (jnp.asarray(LOW) * 1e4).astype(dtype), (jnp.asarray(HIGH) * 1e4).astype(dtype)
    h = _head(dtype=dtype)
    s = h.apply(h.init(jax.random.key(0), low, high), low, high)
    assert s.dtype == dtype and bool(jnp.all(jnp.isfinite(s)))


def test_constant_map_finite():
    x = jnp.full((2, 6, 6, 16), 3.0)
    m = L.ContextAwarePyramid(16)
    y, _ = m.apply(m.init(jax.random.key(0), x), x, train=True, mutable=["batch_stats"])
    assert bool(jnp.all(jnp.isfinite(y)))


def test_pyramid_channels_not_divisible():
    with pytest.raises(ValueError, match=r"ContextAwarePyramid: out_channels must be divisible "
                                         r"by 1 \+ len\(dilations\)=4, got 18"):
        L.ContextAwarePyramid(18).init(jax.random.key(0), jnp.ones((1, 4, 4, 18)))
    with pytest.raises(ValueError, match=r"ContextAwarePyramid: out_channels must be divisible"):
        N.ContextAwarePyramid(18, rngs=nnx.Rngs(0))


def test_pyramid_bad_dilations():
    with pytest.raises(ValueError, match=r"ContextAwarePyramid: dilations must be an integer "
                                         r">= 1, got 0"):
        N.ContextAwarePyramid(16, dilations=(0, 1, 2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ContextAwarePyramid: dilations must be a sequence"):
        N.ContextAwarePyramid(16, dilations=3, rngs=nnx.Rngs(0))


def test_pyramid_bad_input_channels():
    with pytest.raises(ValueError, match=r"ContextAwarePyramid: x must be 16 channels"):
        L.ContextAwarePyramid(16).init(jax.random.key(0), jnp.ones((1, 4, 4, 8)))


def test_spatial_bad_kernel():
    with pytest.raises(ValueError, match=r"PyramidSpatialAttention: kernel_size must be an odd "
                                         r"positive integer, got 8"):
        L.PyramidSpatialAttention(16, kernel_size=8).init(jax.random.key(0), X)


def test_spatial_guide_size_mismatch():
    m = L.PyramidSpatialAttention(16, kernel_size=3)
    with pytest.raises(ValueError, match=r"rescale: weights must be broadcastable"):
        m.init(jax.random.key(0), jnp.ones((2, 5, 5, 4)), guide=X)


def test_head_bad_inputs():
    m = _head()
    with pytest.raises(ValueError, match=r"PyramidFeatureAttention: high must be 12 channels"):
        m.init(jax.random.key(0), jnp.asarray(LOW), jnp.ones((2, 6, 5, 3)))
    with pytest.raises(ValueError, match=r"pyramid_feature_attention: high must be no larger "
                                         r"than low's size"):
        m.init(jax.random.key(0), jnp.asarray(LOW), jnp.ones((2, 24, 5, 12)))
    with pytest.raises(ValueError, match=r"pyramid_feature_attention: high must be the leading "
                                         r"\(batch\) dims \(2,\) of low, got shape "
                                         r"\(3, 6, 5, 12\)"):
        m.init(jax.random.key(0), jnp.asarray(LOW), jnp.ones((3, 6, 5, 12)))
    with pytest.raises(ValueError, match=r"PyramidFeatureAttention: features must be an integer"):
        _head("nnx", features=0)
