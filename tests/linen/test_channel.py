"""Channel attention modules: parity with PyTorch references, linen == nnx, jit/grad/vmap, errors.

The nnx half lives here too (same parameters, same test): one place per mechanism.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from attention_jax import linen as L
from attention_jax import nnx as N
from tests.parity import check_linen_equals_nnx, check_module_parity
from tests.reference import channel as R

X = np.random.default_rng(0).normal(size=(2, 6, 5, 32)).astype(np.float32)


@pytest.mark.parametrize("add_maxpool", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_se_parity_and_nnx(add_maxpool, bias):
    m = L.SqueezeExcite(32, rd_ratio=0.25, add_maxpool=add_maxpool, bias=bias)
    ref = R.SqueezeExcite(32, 8, add_maxpool=add_maxpool, bias=bias)
    v = check_module_parity(m, ref, X)
    n = N.SqueezeExcite(32, rd_ratio=0.25, add_maxpool=add_maxpool, bias=bias,
                        rngs=nnx.Rngs(1))
    check_linen_equals_nnx(m, n, X, v)


def test_se_hard_sigmoid_gate_parity():
    m = L.SqueezeExcite(32, rd_channels=4, gate="hard_sigmoid", act="silu")
    ref = R.SqueezeExcite(32, 4, act=torch.nn.SiLU, gate=torch.nn.functional.hardsigmoid)
    check_module_parity(m, ref, X)


def test_se_jit_grad_vmap():
    m = L.SqueezeExcite(32)
    v = m.init(jax.random.key(0), X)
    y = jax.jit(m.apply)(v, X)
    np.testing.assert_allclose(y, m.apply(v, X), rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda v: m.apply(v, X).sum())(v)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g))
    yv = jax.vmap(lambda a: m.apply(v, a[None])[0])(X)
    np.testing.assert_allclose(yv, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_se_low_precision_large_values_finite(dtype):
    x = (jnp.asarray(X) * 1e4).astype(dtype)
    m = L.SqueezeExcite(32, dtype=dtype)
    v = m.init(jax.random.key(0), x)
    y = m.apply(v, x)
    assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y)))


def test_se_bad_input():
    m = L.SqueezeExcite(32)
    with pytest.raises(ValueError, match=r"SqueezeExcite: x must be rank 4 \(N, H, W, C\)"):
        m.init(jax.random.key(0), jnp.ones((6, 5, 32)))
    with pytest.raises(ValueError, match=r"SqueezeExcite: x must be 32 channels"):
        m.init(jax.random.key(0), jnp.ones((1, 6, 5, 16)))
    with pytest.raises(ValueError, match=r"SqueezeExcite: x must be a floating-point array"):
        m.init(jax.random.key(0), jnp.ones((1, 6, 5, 32), jnp.int32))
    with pytest.raises(ValueError, match=r"SqueezeExcite: rd_ratio must be large enough"):
        L.SqueezeExcite(8, rd_divisor=1).init(jax.random.key(0), jnp.ones((1, 2, 2, 8)))
    with pytest.raises(ValueError, match=r"get_gate: gate must be a callable or one of"):
        L.SqueezeExcite(32, gate="sigmoud").init(jax.random.key(0), jnp.ones((1, 2, 2, 32)))
    with pytest.raises(ValueError, match=r"SqueezeExcite: rd_channels must be an integer >= 1"):
        N.SqueezeExcite(32, rd_channels=0, rngs=nnx.Rngs(0))
