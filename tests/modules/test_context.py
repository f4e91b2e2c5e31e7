"""ASPP (DeepLabv3): parity with the PyTorch reference, linen == nnx, jit/grad/vmap, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax import linen as L
from attention_jax import load_linen_variables
from attention_jax import nnx as N
from attention_jax.torch_reference import context as R
from tests.parity import check_linen_equals_nnx, check_module_parity, randomize_batch_stats

C = 8
X = np.random.default_rng(0).normal(size=(2, 9, 7, C)).astype(np.float32)


def _vars(m, seed=0):
    return randomize_batch_stats(dict(m.init(jax.random.key(seed), X)), jax.random.key(1))


@pytest.mark.parametrize("kw", [{}, {"atrous_rates": (1, 2, 3)}, {"out_channels": 5},
                                {"atrous_rates": (2, 4)}])
def test_aspp_parity_and_nnx(kw):
    m = L.ASPP(C, **kw)
    rates = kw.get("atrous_rates", (6, 12, 18))
    v = check_module_parity(m, R.ASPP(C, kw.get("out_channels"), rates), X, variables=_vars(m))
    check_linen_equals_nnx(m, N.ASPP(C, **kw, rngs=nnx.Rngs(1)), jnp.asarray(X), v, atol=1e-5)


def test_aspp_jit_grad_vmap_and_train_mode():
    m = L.ASPP(C, atrous_rates=(1, 2, 3))
    v = _vars(m)
    y = m.apply(v, X)
    np.testing.assert_allclose(jax.jit(m.apply)(v, X), y, rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda p: jnp.sum(m.apply({**v, "params": p}, X) ** 2))(v["params"])
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g))
    np.testing.assert_allclose(jax.vmap(lambda a: m.apply(v, a[None])[0])(X), y, rtol=1e-5,
                               atol=1e-5)
    yt, upd = m.apply(v, X, train=True, mutable=["batch_stats"])
    n = load_linen_variables(N.ASPP(C, atrous_rates=(1, 2, 3), rngs=nnx.Rngs(0)), v)
    n.train()
    np.testing.assert_allclose(n(jnp.asarray(X)), yt, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_aspp_low_precision_and_constant_finite(dtype):
    m = L.ASPP(C, dtype=dtype)
    v = _vars(m)
    for x in ((jnp.asarray(X) * 1e4).astype(dtype), jnp.full(X.shape, 7.0, dtype)):
        y = m.apply(v, x)
        assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y)))


def test_aspp_bad_input():
    k = jax.random.key(0)
    with pytest.raises(ValueError, match=r"ASPP: x must be 8 channels"):
        L.ASPP(C).init(k, jnp.ones((1, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"ASPP: atrous_rates must be a non-empty tuple"):
        L.ASPP(C, atrous_rates=()).init(k, X)
    with pytest.raises(ValueError, match=r"ASPP: atrous_rates must be an integer >= 1"):
        N.ASPP(C, atrous_rates=(6, 0), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ASPP: out_channels must be an integer >= 1"):
        N.ASPP(C, out_channels=-1, rngs=nnx.Rngs(0))
