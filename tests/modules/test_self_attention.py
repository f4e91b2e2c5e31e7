"""Self-attention modules (non-local, DANet, CCNet, MHSA-2d): parity with PyTorch references,
linen == nnx, jit/grad/vmap, identity start, low precision, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax import linen as L
from attention_jax import nnx as N
from attention_jax.torch_reference import self_attention as R
from tests.parity import (
    assert_close,
    check_linen_equals_nnx,
    jax_to_torch_state,
    load_into_torch,
    nchw_to_nhwc,
    nhwc_to_nchw,
    randomize_batch_stats,
)

C = 16
X = np.random.default_rng(0).normal(size=(2, 6, 5, C)).astype(np.float32)


def _perturbed(m, x=X, seed=0, scale=0.3):
    """Init, then move every parameter off its init (gamma = 0 and zero-initialised output
    layers would otherwise hide the attention path) and randomise BatchNorm statistics."""
    v = dict(m.init(jax.random.key(seed), x))
    leaves, tree = jax.tree_util.tree_flatten(v["params"])
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    v["params"] = jax.tree_util.tree_unflatten(
        tree, [a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys,
                                                                        strict=True)])
    return randomize_batch_stats(v, jax.random.key(seed + 2))


def _check_parity(m, ref, x, variables, *, zero_grad=(), rtol=1e-5, atol_rel=1e-5):
    """``tests.parity.check_module_parity``, except that a parameter whose gradient is zero by
    the math (``zero_grad``) must be ~0 on both sides relative to the largest gradient.

    A key-projection bias adds ``q_i . b`` to every score of row i and softmax is
    shift-invariant, so its gradient is exactly zero (float noise ~1e-7 on each side, which a
    relative comparison cannot match)."""
    x = jnp.asarray(x)
    load_into_torch(ref, variables)
    ref.eval()
    y = m.apply(variables, x)
    cot = jax.random.normal(jax.random.key(7), y.shape)
    g_p, g_x = jax.grad(lambda p, x: jnp.sum(m.apply({**variables, "params": p}, x) * cot),
                        argnums=(0, 1))(variables["params"], x)
    xt = nhwc_to_nchw(x).requires_grad_(True)
    yt = ref(xt)
    assert_close(y, nchw_to_nhwc(yt), rtol=rtol, atol_rel=atol_rel, what="forward")
    (yt * nhwc_to_nchw(cot)).sum().backward()
    assert_close(g_x, nchw_to_nhwc(xt.grad), rtol=rtol, atol_rel=atol_rel, what="grad x")
    named = dict(ref.named_parameters())
    grads = jax_to_torch_state(g_p)
    assert set(grads) == set(named), (sorted(grads), sorted(named))
    top = max(float(np.abs(g).max()) for g in grads.values())
    for name, g in grads.items():
        gt = named[name].grad.numpy()
        if name in zero_grad:
            assert np.abs(g).max() <= 1e-5 * top and np.abs(gt).max() <= 1e-5 * top, name
        else:
            assert_close(g, gt, rtol=rtol, atol_rel=atol_rel, what=f"grad {name}")


def _parity_and_nnx(m, ref, n, x=X, zero_grad=(), rtol=1e-5, atol_rel=1e-5):
    v = _perturbed(m, x)
    _check_parity(m, ref, x, v, zero_grad=zero_grad, rtol=rtol, atol_rel=atol_rel)
    check_linen_equals_nnx(m, n, jnp.asarray(x), v, atol=1e-5)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product", "concatenation"])
@pytest.mark.parametrize("sub_sample", [False, True])
def test_non_local_parity_and_nnx(mode, sub_sample):
    kw = {"mode": mode, "sub_sample": sub_sample}
    _parity_and_nnx(L.NonLocal(C, inter_channels=8, **kw), R.NonLocal(C, 8, **kw),
                    N.NonLocal(C, inter_channels=8, **kw, rngs=nnx.Rngs(1)),
                    zero_grad=("phi.bias",) if mode == "embedded_gaussian" else ())


@pytest.mark.parametrize("use_scale", [True, False])
def test_non_local_no_bn_and_scale_parity(use_scale):
    kw = {"use_bn": False, "use_scale": use_scale}
    _parity_and_nnx(L.NonLocal(C, **kw), R.NonLocal(C, C // 2, **kw),
                    N.NonLocal(C, **kw, rngs=nnx.Rngs(1)), zero_grad=("phi.bias",))


@pytest.mark.parametrize("use_bn", [True, False])
def test_non_local_starts_as_identity(use_bn):
    m = L.NonLocal(C, use_bn=use_bn)
    v = m.init(jax.random.key(0), X)
    np.testing.assert_array_equal(np.asarray(m.apply(v, X)), X)
    n = N.NonLocal(C, use_bn=use_bn, rngs=nnx.Rngs(0))
    n.eval()
    np.testing.assert_array_equal(np.asarray(n(jnp.asarray(X))), X)


def test_non_local_chunked_equals_xla():
    v = _perturbed(L.NonLocal(C))
    a = L.NonLocal(C, implementation="xla").apply(v, X)
    b = L.NonLocal(C, implementation="chunked").apply(v, X)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_pam_cam_parity_and_nnx():
    _parity_and_nnx(L.PositionAttention(C), R.PositionAttention(C, C // 8),
                    N.PositionAttention(C, rngs=nnx.Rngs(1)), zero_grad=("key.bias",))
    _parity_and_nnx(L.PositionAttention(C, qk_channels=3), R.PositionAttention(C, 3),
                    N.PositionAttention(C, qk_channels=3, rngs=nnx.Rngs(1)),
                    zero_grad=("key.bias",))
    _parity_and_nnx(L.ChannelSelfAttention(C), R.ChannelSelfAttention(C),
                    N.ChannelSelfAttention(C, rngs=nnx.Rngs(1)))


def test_danet_head_parity_and_nnx():
    # Two BN-ReLU convs before each softmax make the perturbed head's attention peaked, so
    # float32 rounding reaches ~3e-5 of the largest key-weight gradient (both frameworks).
    _parity_and_nnx(L.DualAttentionHead(C), R.DualAttentionHead(C),
                    N.DualAttentionHead(C, rngs=nnx.Rngs(1)), zero_grad=("sa.key.bias",),
                    atol_rel=5e-5)
    _parity_and_nnx(L.DualAttentionHead(C, out_channels=5), R.DualAttentionHead(C, 5),
                    N.DualAttentionHead(C, out_channels=5, rngs=nnx.Rngs(1)),
                    zero_grad=("sa.key.bias",), atol_rel=5e-5)


@pytest.mark.parametrize("recurrence", [1, 2])
def test_criss_cross_parity_and_nnx(recurrence):
    _parity_and_nnx(L.CrissCrossAttention(C, recurrence=recurrence),
                    R.CrissCrossAttention(C, C // 8, recurrence),
                    N.CrissCrossAttention(C, recurrence=recurrence, rngs=nnx.Rngs(1)),
                    zero_grad=("key.bias",))


def test_criss_cross_masks_self_in_column_only():
    """Own position counted once: with q = k = v = identity-like maps, compare with a direct
    formula over the criss-cross neighbourhood (row + column minus the duplicate self)."""
    from attention_jax import functional as F

    x = jnp.asarray(X[:1, :4, :3, :4])
    ident = lambda a: a
    y = F.criss_cross_attention(x, query=ident, key=ident, value=ident,
                                gamma=jnp.ones((1,)), recurrence=1)
    h, w = 4, 3
    want = np.zeros((h, w, 4), np.float32)
    xs = np.asarray(x[0])
    for i in range(h):
        for j in range(w):
            nbrs = [(a, j) for a in range(h) if a != i] + [(i, b) for b in range(w)]
            e = np.array([xs[i, j] @ xs[a, b] for a, b in nbrs])
            p = np.exp(e - e.max())
            p /= p.sum()
            want[i, j] = sum(pk * xs[a, b] for pk, (a, b) in zip(p, nbrs, strict=True))
    np.testing.assert_allclose(y[0], want + xs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["none", "relative", "absolute"])
def test_mhsa2d_parity_and_nnx(position):
    size = (6, 5) if position != "none" else None
    kw = {"num_heads": 4, "position": position, "input_size": size}
    _parity_and_nnx(L.MultiHeadSelfAttention2d(C, **kw),
                    R.MultiHeadSelfAttention2d(C, 4, position=position, input_size=size),
                    N.MultiHeadSelfAttention2d(C, **kw, rngs=nnx.Rngs(1)))


def test_mhsa2d_chunked_equals_xla_with_relative_bias():
    kw = {"num_heads": 2, "position": "relative", "input_size": (6, 5)}
    v = _perturbed(L.MultiHeadSelfAttention2d(C, **kw))

    def run(impl):
        m = L.MultiHeadSelfAttention2d(C, implementation=impl, **kw)
        return jax.value_and_grad(lambda p: jnp.sum(m.apply({"params": p}, X) ** 2))(
            v["params"])

    (a, ga), (b, gb) = run("xla"), run("chunked")
    np.testing.assert_allclose(b, a, rtol=1e-5)
    for x, y in zip(jax.tree_util.tree_leaves(gb), jax.tree_util.tree_leaves(ga), strict=True):
        assert_close(x, y, rtol=1e-5, atol_rel=1e-5)


MODULES = {
    "nl": lambda: L.NonLocal(C),
    "pam": lambda: L.PositionAttention(C),
    "cam": lambda: L.ChannelSelfAttention(C),
    "danet": lambda: L.DualAttentionHead(C),
    "cca": lambda: L.CrissCrossAttention(C),
    "mhsa2d": lambda: L.MultiHeadSelfAttention2d(C, num_heads=4),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_jit_grad_vmap(name):
    m = MODULES[name]()
    v = _perturbed(m)
    y = m.apply(v, X)
    np.testing.assert_allclose(jax.jit(m.apply)(v, X), y, rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda p, x: jnp.sum(m.apply({**v, "params": p}, x) ** 2), argnums=(0, 1))(
        v["params"], X)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g))
    yv = jax.vmap(lambda a: m.apply(v, a[None])[0])(X)
    np.testing.assert_allclose(yv, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_large_values_finite(name, dtype):
    m = MODULES[name]()
    v = _perturbed(m, scale=0.05)
    x = (jnp.asarray(X) / np.abs(X).max() * 1e4).astype(dtype)  # |x| up to 1e4
    y = m.apply(v, x)
    assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y)))
    g = jax.grad(lambda x: jnp.sum(m.apply(v, x).astype(jnp.float32)))(x)
    assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("name", list(MODULES))
def test_constant_map_finite(name):
    m = MODULES[name]()
    v = _perturbed(m)
    for x in (jnp.zeros_like(X), jnp.full_like(X, 3.0)):
        assert bool(jnp.all(jnp.isfinite(m.apply(v, x))))


@pytest.mark.parametrize("name", ["nl", "danet"])
def test_train_mode_linen_equals_nnx(name):
    m = MODULES[name]()
    v = _perturbed(m)
    n = {"nl": lambda: N.NonLocal(C, rngs=nnx.Rngs(0)),
         "danet": lambda: N.DualAttentionHead(C, rngs=nnx.Rngs(0))}[name]()
    from attention_jax import load_linen_variables

    load_linen_variables(n, v)
    n.train()
    y, upd = m.apply(v, X, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(n(jnp.asarray(X)), y, rtol=1e-5, atol=1e-5)
    assert "batch_stats" in upd


def test_bad_input():
    k = jax.random.key(0)
    with pytest.raises(ValueError, match=r"NonLocal: x must be 16 channels"):
        L.NonLocal(C).init(k, jnp.ones((1, 4, 4, 8)))
    with pytest.raises(ValueError, match=r"NonLocal: mode must be one of 'embedded_gaussian'"):
        L.NonLocal(C, mode="gaussian").init(k, X)
    with pytest.raises(ValueError, match=r"NonLocal: mode must be one of"):
        N.NonLocal(C, mode="gaussian", rngs=nnx.Rngs(0))
    # Named by the module (it was non_local's message; found by tests/test_properties.py).
    with pytest.raises(ValueError, match=r"NonLocal: x must be at least 2x2 pixels"):
        L.NonLocal(C, sub_sample=True).init(k, jnp.ones((1, 1, 4, C)))
    with pytest.raises(ValueError, match=r"NonLocal: x must be at least 2x2 pixels"):
        N.NonLocal(C, sub_sample=True, rngs=nnx.Rngs(0))(jnp.ones((1, 1, 4, C)))
    with pytest.raises(ValueError, match=r"PositionAttention: x must be at least rank 3"):
        L.PositionAttention(C).init(k, jnp.ones((4, C)))
    with pytest.raises(ValueError, match=r"PositionAttention: qk_channels must be an integer"):
        N.PositionAttention(C, qk_channels=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ChannelSelfAttention: x must be a floating-point"):
        L.ChannelSelfAttention(C).init(k, jnp.ones((1, 4, 4, C), jnp.int32))
    with pytest.raises(ValueError, match=r"CrissCrossAttention: recurrence must be an integer"):
        L.CrissCrossAttention(C, recurrence=0).init(k, X)
    with pytest.raises(ValueError, match=r"MultiHeadSelfAttention2d: channels must be "
                       r"divisible by num_heads=5"):
        L.MultiHeadSelfAttention2d(C, num_heads=5).init(k, X)
    with pytest.raises(ValueError, match=r"MultiHeadSelfAttention2d: input_size must be"):
        N.MultiHeadSelfAttention2d(C, position="relative", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"MultiHeadSelfAttention2d: x must be spatial size "
                       r"\(4, 4\)"):
        L.MultiHeadSelfAttention2d(C, position="absolute", input_size=(4, 4)).init(k, X)
    with pytest.raises(ValueError, match=r"MultiHeadSelfAttention2d: position must be one of"):
        L.MultiHeadSelfAttention2d(C, position="rope").init(k, X)
    with pytest.raises(ValueError, match=r"DualAttentionHead: out_channels must be an integer"):
        N.DualAttentionHead(C, out_channels=0, rngs=nnx.Rngs(0))
