"""Pure forwards of self-attention over pixels: check_grads, brute-force formulas, bad input."""

import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import functional as F
from tests.gradcheck import check_grads

RNG = np.random.default_rng(0)
C = 4


def _w(*shape):
    return jnp.asarray(RNG.normal(size=shape) * 0.5, jnp.float64)


def _lin(w):
    return lambda a: a @ w


def _x():
    return jnp.asarray(RNG.normal(size=(2, 3, 4, C)), jnp.float64)


# Only the embedded-Gaussian mode runs through attention(), so only it has a chunked case.
@pytest.mark.parametrize("mode,impl", [(m, "xla") for m in F.NON_LOCAL_MODES]
                         + [("embedded_gaussian", "chunked")])
def test_non_local_check_grads(x64, mode, impl):
    wt, wp, wg, wo, wc = _w(C, 2), _w(C, 2), _w(C, 2), _w(2, C), _w(4, 1)

    def f(x, wt, wp, wg, wo, wc):
        return F.non_local(x, theta=_lin(wt), phi=_lin(wp), g=_lin(wg), out=_lin(wo),
                           concat_project=_lin(wc), mode=mode, implementation=impl)

    check_grads(f, (_x(), wt, wp, wg, wo, wc), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_pam_cam_cca_check_grads(x64):
    wq, wk, wv, gamma = _w(C, 2), _w(C, 2), _w(C, C), _w(1)
    pam = lambda x, wq, wk, wv, g: F.position_attention(x, query=_lin(wq), key=_lin(wk),
                                                        value=_lin(wv), gamma=g)
    check_grads(pam, (_x(), wq, wk, wv, gamma), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
    cam = lambda x, g: F.channel_self_attention(x * 0.3, gamma=g)
    check_grads(cam, (_x(), gamma), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
    cca = lambda x, wq, wk, wv, g: F.criss_cross_attention(x, query=_lin(wq), key=_lin(wk),
                                                           value=_lin(wv), gamma=g)
    check_grads(cca, (_x(), wq, wk, wv, gamma), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_mhsa2d_check_grads(x64):
    table, pos = _w(5 * 7, 2), _w(1, 3, 4, C)
    wqkv, wp = _w(C, 3 * C), _w(C, C)
    mhsa = lambda x, a, b, t, p: F.multi_head_self_attention_2d(
        x, qkv=_lin(a), proj=_lin(b), num_heads=2, rel_pos_table=t, pos_embed=p)
    check_grads(mhsa, (_x(), wqkv, wp, table, pos), order=1, modes=["rev"], atol=1e-5,
                rtol=1e-5)


def test_cam_is_softmax_of_negative_energy():
    """The official max-minus-energy equals softmax(-E) (shift invariance), written out."""
    x = np.asarray(RNG.normal(size=(1, 3, 2, 5)), np.float32) * 0.5
    y = F.channel_self_attention(jnp.asarray(x), gamma=jnp.ones((1,)))
    xc = x.reshape(6, 5).T  # (C, HW)
    e = -(xc @ xc.T)
    p = np.exp(e - e.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = (p @ xc).T.reshape(1, 3, 2, 5) + x
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_relative_position_index_brute_force():
    h, w = 3, 4
    idx = np.asarray(F.relative_position_index(size=(h, w)))
    pos = [(i, j) for i in range(h) for j in range(w)]
    for a, (i1, j1) in enumerate(pos):
        for b, (i2, j2) in enumerate(pos):
            assert idx[a, b] == (i1 - i2 + h - 1) * (2 * w - 1) + (j1 - j2 + w - 1)
    table = jnp.arange(5 * 7 * 2, dtype=jnp.float32).reshape(35, 2)
    bias = F.relative_position_bias(table, size=(h, w))
    assert bias.shape == (2, 12, 12)
    np.testing.assert_array_equal(bias[1], np.asarray(table)[idx, 1])


def test_bad_input():
    x = jnp.ones((1, 3, 4, C))
    ident = lambda a: a
    with pytest.raises(ValueError, match=r"non_local: mode must be one of 'embedded_gaussian'"):
        F.non_local(x, theta=ident, phi=ident, g=ident, out=ident, mode="gaussian")
    with pytest.raises(ValueError, match=r"non_local: concat_project must be a layer"):
        F.non_local(x, theta=ident, phi=ident, g=ident, out=ident, mode="concatenation")
    with pytest.raises(ValueError, match=r"position_attention: gamma must be a scalar or shape"):
        F.position_attention(x, query=ident, key=ident, value=ident, gamma=jnp.ones(2))
    with pytest.raises(ValueError, match=r"channel_self_attention: x must be at least rank 3"):
        F.channel_self_attention(jnp.ones((4, C)), gamma=jnp.ones(1))
    with pytest.raises(ValueError, match=r"criss_cross_attention: recurrence must be an "
                       r"integer >= 1"):
        F.criss_cross_attention(x, query=ident, key=ident, value=ident, gamma=jnp.ones(1),
                                recurrence=0)
    with pytest.raises(ValueError, match=r"relative_position_bias: table must be shape"):
        F.relative_position_bias(jnp.ones((34, 2)), size=(3, 4))
    with pytest.raises(ValueError, match=r"multi_head_self_attention_2d: channels must be "
                       r"divisible by num_heads=3"):
        F.multi_head_self_attention_2d(x, qkv=ident, proj=ident, num_heads=3)
    with pytest.raises(ValueError, match=r"multi_head_self_attention_2d: pos_embed must be "
                       r"shape \(1, 3, 4, 4\)"):
        F.multi_head_self_attention_2d(x, qkv=ident, proj=ident, num_heads=2,
                                       pos_embed=jnp.ones((1, 4, 3, C)))


# --- Found by tests/test_properties.py --------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 0, 3, 4), (2, 3, 0, 4), (2, 3, 3, 0)])
def test_channel_self_attention_empty_map(shape):
    """No pixels or no channels: an empty output (dot_scores rejected the empty energies)."""
    x = jnp.zeros(shape)
    assert F.channel_self_attention(x, gamma=jnp.ones((1,))).shape == shape


@pytest.mark.parametrize("size", [3, (2,), (2, 3, 4)])
def test_relative_position_size_must_be_a_pair(size):
    """A bad size was a TypeError or an unnamed unpacking ValueError."""
    with pytest.raises(ValueError, match=r"relative_position_index: size must be a pair"):
        F.relative_position_index(size=size)
    with pytest.raises(ValueError, match=r"relative_position_bias: size must be a pair"):
        F.relative_position_bias(jnp.zeros((15, 2)), size=size)
