"""Pure forwards of convolutional context: ASPP and the conv-norm-act unit. Formulas written out
in NumPy, check_grads, empty batches, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import functional as F
from tests.gradcheck import check_grads

RNG = np.random.default_rng(0)
C = 4


def _w(*shape):
    return RNG.normal(size=shape) * 0.5


def _lin(w):
    return lambda a: a @ w


def _x(n=2):
    return jnp.asarray(RNG.normal(size=(n, 3, 4, C)), jnp.float32)


def test_aspp_matches_formula():
    """concat([b_1(x), ..., b_B(x), broadcast(pool(mean_HW x))]) -> project, in that order."""
    x = np.asarray(_x(), np.float64)
    wa, wb, wp, wproj = (_w(*s) for s in ((C, 3), (C, 3), (C, 3), (9, 5)))
    lin = lambda w: _lin(jnp.asarray(w, jnp.float32))
    y = F.aspp(jnp.asarray(x, jnp.float32), branches=[lin(wa), lin(wb)], pool_branch=lin(wp),
               project=lin(wproj))
    pooled = x.mean(axis=(1, 2), keepdims=True) @ wp
    cat = np.concatenate([x @ wa, x @ wb, np.broadcast_to(pooled, x.shape[:3] + (3,))], -1)
    assert y.shape == (2, 3, 4, 5) and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), cat @ wproj, rtol=1e-5, atol=1e-5)


def test_aspp_check_grads(x64):
    ws = [jnp.asarray(_w(C, 3)) for _ in range(3)]
    aspp = lambda x, a, b, c, p: F.aspp(x, branches=[_lin(a), _lin(b)], pool_branch=_lin(c),
                                        project=_lin(p))
    args = (_x().astype(jnp.float64), *ws, jnp.asarray(_w(9, C)))
    check_grads(aspp, args, order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_aspp_jit_vmap_and_empty_batch():
    ws = [jnp.asarray(_w(C, 2), jnp.float32) for _ in range(3)]
    f = lambda x: F.aspp(x, branches=[_lin(ws[0])], pool_branch=_lin(ws[1]),
                         project=_lin(jnp.concatenate([ws[2], ws[2]], 0)[:4]))
    x = _x()
    y = f(x)
    np.testing.assert_allclose(jax.jit(f)(x), y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(lambda a: f(a[None])[0])(x), y, rtol=1e-5, atol=1e-6)
    assert f(x[:0]).shape == (0, 3, 4, 2)


def test_aspp_keeps_input_dtype():
    x = _x().astype(jnp.bfloat16)
    lin32 = lambda w: (lambda a: a.astype(jnp.float32) @ w)  # layers computing in float32
    w = jnp.asarray(_w(C, 2), jnp.float32)
    y = F.aspp(x, branches=[lin32(w)], pool_branch=lin32(w), project=lin32(jnp.ones((4, 3))))
    assert y.dtype == jnp.bfloat16


def test_conv_norm_act_order():
    """act(norm(conv(x))): with non-commuting pieces the order shows."""
    x = _x()
    conv = lambda a: a * 2.0
    norm = lambda a: a - 1.0
    np.testing.assert_allclose(F.conv_norm_act(x, conv=conv, norm=norm),
                               jax.nn.relu(2.0 * x - 1.0), rtol=1e-6)
    np.testing.assert_allclose(F.conv_norm_act(x, conv=conv, norm=norm, act="identity"),
                               2.0 * x - 1.0, rtol=1e-6)
    np.testing.assert_allclose(F.conv_norm_act(x, conv=conv, act="tanh"), jnp.tanh(2.0 * x),
                               rtol=1e-6)
    np.testing.assert_allclose(F.conv_norm_act(x, conv=conv, norm=norm, act=jnp.abs),
                               jnp.abs(2.0 * x - 1.0), rtol=1e-6)


def test_bad_input():
    x = jnp.ones((1, 3, 4, C))
    ident = lambda a: a
    with pytest.raises(ValueError, match=r"aspp: branches must be a non-empty sequence"):
        F.aspp(x, branches=[], pool_branch=ident, project=ident)
    with pytest.raises(ValueError, match=r"aspp: x must be at least rank 3 \(\.\.\., H, W, C\)"):
        F.aspp(x[0, 0], branches=[ident], pool_branch=ident, project=ident)
    with pytest.raises(ValueError, match=r"conv_norm_act: x must be a floating-point array"):
        F.conv_norm_act(x.astype(jnp.int32), conv=ident)
    with pytest.raises(ValueError, match=r"get_act: act must be a callable or one of"):
        F.conv_norm_act(x, conv=ident, act="relu7")
