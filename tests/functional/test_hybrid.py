"""Pure hybrid-attention forwards (CBAM, BAM, coordinate attention) and the directional pools:
torch agreement, check_grads, jit/vmap, the spatial gate's sigmoid, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch.nn.functional as tF

from attention_jax import functional as F
from tests.gradcheck import check_grads
from tests.parity import assert_close, nchw_to_nhwc, nhwc_to_nchw

X = np.random.default_rng(0).normal(size=(2, 7, 5, 6)).astype(np.float32)


def _w(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) / np.sqrt(shape[-2]))


def _conv(w, dilation=1):
    """A 'same' conv (kernel (k, k, I, O), odd k) as a plain closure."""
    k = w.shape[0]
    p = dilation * (k // 2)
    return lambda x: jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), (1, 1), ((p, p), (p, p)), rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_directional_pools_match_torch():
    xt = nhwc_to_nchw(X)
    assert_close(F.avg_pool_h(X), nchw_to_nhwc(tF.adaptive_avg_pool2d(xt, (None, 1))))
    assert_close(F.avg_pool_w(X), nchw_to_nhwc(tF.adaptive_avg_pool2d(xt, (1, None))))
    assert F.avg_pool_h(X).shape == (2, 7, 1, 6) and F.avg_pool_w(X).shape == (2, 1, 5, 6)


def test_directional_pools_grads_and_low_precision(x64):
    x = jnp.asarray(X[:1, :3, :4, :2], jnp.float64)
    for fn in (F.avg_pool_h, F.avg_pool_w):
        check_grads(fn, (x,), order=2, modes=["rev", "fwd"])
    big = jnp.full((1, 64, 64, 2), 3e4, jnp.float16)  # 64 * 3e4 overflows a float16 sum
    for fn in (F.avg_pool_h, F.avg_pool_w):
        out = fn(big)
        assert out.dtype == jnp.float16 and bool(jnp.all(jnp.isfinite(out)))


def test_spatial_gate_sigmoid_is_applied():
    """With constant logits c the weight must be sigmoid(c) (a port that forgets the sigmoid
    would return x * c)."""
    for c in (-3.0, 0.0, 2.0):
        conv = lambda p, c=c: jnp.full(p.shape[:3] + (1,), c, p.dtype)  # noqa: E731
        out = F.cbam_spatial_gate(X, conv=conv)
        np.testing.assert_allclose(out, X * jax.nn.sigmoid(c), rtol=1e-6, atol=1e-7)
    # And through CBAM too.
    out = F.cbam(X, reduce=lambda s: s * 0.0, expand=lambda s: s,
                 conv=lambda p: jnp.full(p.shape[:3] + (1,), 2.0, p.dtype))
    np.testing.assert_allclose(out, X * 0.5 * jax.nn.sigmoid(2.0), rtol=1e-6, atol=1e-7)


def test_bam_combinations():
    # Mc = 2 everywhere, Ms = 3 everywhere: sum 5, product 6.
    zeros_c = dict(fc1=lambda s: s[..., :2], bn1=lambda s: s,
                   fc2=lambda s: jnp.full(s.shape[:3] + (6,), 2.0, s.dtype))
    spatial = dict(conv_reduce=lambda x: x[..., :2], bn_reduce=lambda s: s, convs_di=(),
                   bns_di=(), conv_final=lambda s: s[..., :1] * 0 + 3.0)
    add = F.bam(X, **zeros_c, **spatial, combine="paper")
    mul = F.bam(X, **zeros_c, **spatial, combine="official")
    np.testing.assert_allclose(add, X * (1 + jax.nn.sigmoid(5.0)), rtol=1e-6)
    np.testing.assert_allclose(mul, X * (1 + jax.nn.sigmoid(6.0)), rtol=1e-6)


def test_functional_check_grads(x64):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 3, 4)), jnp.float64)
    c, r = 4, 2
    a, b = _w(c, r, seed=1), _w(r, c, seed=2)
    ks = _w(3, 3, 2, 1, seed=3)

    def cbam(x, a, b, ks):
        return F.cbam(x, reduce=lambda s: s @ a, expand=lambda s: s @ b, conv=_conv(ks),
                      norm=lambda s: 0.5 * s + 0.1)

    check_grads(cbam, (x, a, b, ks), order=1, modes=["rev"])

    def bam(x, a, b, kr, kd, kf, combine):
        return F.bam(x, fc1=lambda s: s @ a, bn1=lambda s: s, fc2=lambda s: s @ b,
                     conv_reduce=_conv(kr), bn_reduce=jnp.tanh, convs_di=(_conv(kd, 2),),
                     bns_di=(lambda s: s,), conv_final=_conv(kf), act="silu", combine=combine)

    args = (x, a, b, _w(1, 1, c, r, seed=4), _w(3, 3, r, r, seed=5), _w(1, 1, r, 1, seed=6))
    for combine in F.BAM_COMBINES:
        check_grads(lambda *t, cb=combine: bam(*t, cb), args, order=1, modes=["rev"])

    def ca(x, a, bh, bw):
        return F.coordinate_attention(x, conv1=lambda z: z @ a, norm=lambda z: z + 0.1,
                                      conv_h=lambda z: z @ bh, conv_w=lambda z: z @ bw,
                                      act="hard_swish")

    check_grads(ca, (x, a, b, _w(r, c, seed=7)), order=1, modes=["rev"])


def test_functional_jit_vmap():
    a, b = _w(6, 2, seed=1).astype(jnp.float32), _w(2, 6, seed=2).astype(jnp.float32)
    ks = _w(7, 7, 2, 1, seed=3).astype(jnp.float32)
    fns = [
        lambda x: F.cbam(x, reduce=lambda s: s @ a, expand=lambda s: s @ b, conv=_conv(ks)),
        lambda x: F.coordinate_attention(x, conv1=lambda z: z @ a, norm=lambda z: z,
                                         conv_h=lambda z: z @ b, conv_w=lambda z: z @ b),
    ]
    for fn in fns:
        y = fn(X)
        np.testing.assert_allclose(jax.jit(fn)(X), y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(jax.vmap(lambda v, f=fn: f(v[None])[0])(X), y,
                                   rtol=1e-5, atol=1e-6)


def test_coordinate_attention_gates_are_directional():
    """conv_h only sees rows and conv_w only columns: the output weight factorises."""
    ones = lambda z: z  # noqa: E731
    out = F.coordinate_attention(X, conv1=ones, norm=ones, conv_h=ones, conv_w=lambda z: z * 0,
                                 act="identity")
    w_h = jax.nn.sigmoid(X.mean(2, keepdims=True))  # (N, H, 1, C)
    np.testing.assert_allclose(out, X * 0.5 * w_h, rtol=1e-5, atol=1e-6)


# --- bad input --------------------------------------------------------------------------------

def test_bam_unknown_combine():
    with pytest.raises(ValueError, match=r"bam: combine must be one of 'paper', 'official', "
                                         r"got 'sum'"):
        F.bam(X, fc1=None, bn1=None, fc2=None, conv_reduce=None, bn_reduce=None, convs_di=(),
              bns_di=(), conv_final=None, combine="sum")


def test_bam_norms_per_conv():
    with pytest.raises(ValueError, match=r"bam: bns_di must be 2 layers \(one per dilated conv\)"):
        F.bam(X, fc1=None, bn1=None, fc2=None, conv_reduce=None, bn_reduce=None,
              convs_di=(None, None), bns_di=(None,), conv_final=None)


def test_spatial_gate_conv_wrong_shape():
    with pytest.raises(ValueError, match=r"cbam_spatial_gate: conv must be a layer returning "
                                         r"shape \(2, 7, 5, 1\), got shape \(2, 7, 5, 2\)"):
        F.cbam_spatial_gate(X, conv=lambda p: p)


def test_hybrid_rank_and_dtype():
    with pytest.raises(ValueError, match=r"coordinate_attention: x must be at least rank 3"):
        F.coordinate_attention(X[0, 0], conv1=None, norm=None, conv_h=None, conv_w=None)
    with pytest.raises(ValueError, match=r"cbam: x must be a floating-point array"):
        F.cbam(X.astype(np.int32), reduce=None, expand=None, conv=None)


def test_unknown_gate_name():
    with pytest.raises(ValueError, match=r"get_gate: gate must be a callable or one of"):
        F.cbam_channel_gate(X, reduce=None, expand=None, gate="sigmod")
