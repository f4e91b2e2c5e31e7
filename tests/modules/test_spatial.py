"""Spatial transformer modules: parity with PyTorch (F.affine_grid / F.grid_sample), linen ==
nnx, identity at initialisation for every transform, jit/grad, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax import functional as F
from attention_jax import linen as L
from attention_jax import nnx as N
from attention_jax.torch_reference import spatial as R
from tests.parity import check_linen_equals_nnx, check_module_parity, load_into_torch

X = np.random.default_rng(0).normal(size=(2, 9, 10, 3)).astype(np.float32)
TRANSFORMS = ["affine", "similarity", "translation", "perspective", "tps"]


def _perturbed(m, seed=0, scale=0.05):
    """Initial variables with a small random final layer, so the transform is not the identity."""
    v = m.init(jax.random.key(seed), jnp.asarray(X))
    fc2 = v["params"]["loc"]["fc2"]
    k = jax.random.normal(jax.random.key(seed + 1), fc2["kernel"].shape) * scale
    b = fc2["bias"] + jax.random.normal(jax.random.key(seed + 2), fc2["bias"].shape) * scale
    params = {**v["params"], "loc": {**v["params"]["loc"], "fc2": {"kernel": k, "bias": b}}}
    return {**v, "params": params}


CASES = [
    ("affine", {}),
    ("similarity", {"padding_mode": "border"}),
    ("translation", {"mode": "bicubic", "align_corners": True}),
    ("perspective", {"padding_mode": "reflection", "out_size": (6, 7)}),
    ("tps", {"tps_grid_size": (2, 3), "mode": "bilinear", "out_size": (5, 8)}),
]


@pytest.mark.parametrize("transform,kw", CASES, ids=[c[0] for c in CASES])
def test_parity_and_nnx(transform, kw):
    m = L.SpatialTransformer(3, transform=transform, **kw)
    v = _perturbed(m)
    ref = R.SpatialTransformer(3, transform=transform, **kw)
    check_module_parity(m, ref, X, variables=v, rtol=1e-4, atol_rel=1e-5)
    n = N.SpatialTransformer(3, transform=transform, **kw, rngs=nnx.Rngs(1))
    check_linen_equals_nnx(m, n, jnp.asarray(X), v, atol=1e-6)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_identity_at_init(transform):
    m = L.SpatialTransformer(3, transform=transform)
    v = m.init(jax.random.key(0), X)
    y, aux = m.apply(v, X, return_transform=True)
    np.testing.assert_allclose(np.asarray(y), X, atol=1e-4 if transform == "tps" else 1e-5)
    p = F.identity_transform_params(transform)
    np.testing.assert_allclose(np.asarray(aux["params"]), np.tile(p, (2, 1)), atol=0)
    assert aux["grid"].shape == (2, 9, 10, 2) and aux["grid"].dtype == jnp.float32
    key = "control_points" if transform == "tps" else "matrix"
    assert key in aux
    n = N.SpatialTransformer(3, transform=transform, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(n(jnp.asarray(X))), np.asarray(y), atol=1e-6)


@pytest.mark.parametrize("pool_size", [(4, 4), (2, 3), None])
def test_localisation_net_parity_and_nnx(pool_size):
    m = L.LocalisationNet(3, out_features=5, pool_size=pool_size,
                          final_bias=(1.0, 2.0, 3.0, 4.0, 5.0))
    v = m.init(jax.random.key(0), X)
    out = m.apply(v, X)
    np.testing.assert_array_equal(np.asarray(out), np.tile([1.0, 2, 3, 4, 5], (2, 1)))
    k = jax.random.normal(jax.random.key(3), v["params"]["fc2"]["kernel"].shape)
    v = {"params": {**v["params"], "fc2": {**v["params"]["fc2"], "kernel": k}}}
    ref = R.LocalisationNet(3, 5, pool_size=pool_size)
    check_module_parity(m, ref, X, variables=v, output_to_torch_layout=lambda t: t.detach().numpy())
    n = N.LocalisationNet(3, out_features=5, pool_size=pool_size, rngs=nnx.Rngs(0))
    check_linen_equals_nnx(m, n, jnp.asarray(X), v)


def test_localisation_net_sees_position():
    """The same blob at two places: the pooled-grid features that fc1 reads differ (what a
    translation is regressed from); after a global average (pool_size=None) they are identical.
    The blob and the 3x3 convs' reach stay inside the image, so only position differs."""
    a = np.zeros((1, 16, 16, 1), np.float32)
    b = np.zeros_like(a)
    a[0, 4:6, 4:6] = 1.0
    b[0, 8:10, 8:10] = 1.0
    for pool_size, moved in (((4, 4), True), (None, False)):
        m = L.LocalisationNet(1, out_features=2, pool_size=pool_size)
        v = m.init(jax.random.key(1), a)
        fa, fb = (np.asarray(m.apply(v, img, method=_fc1_input)) for img in (a, b))
        diff = np.abs(fa - fb).max()
        assert (diff > 1e-3) if moved else (diff < 1e-6), (pool_size, diff)


def _fc1_input(mdl, x):
    """What LocalisationNet feeds fc1: the same call with fc1 replaced by the identity."""
    return F.localisation_net(x, conv1=mdl.conv1, conv2=mdl.conv2, fc1=lambda h: h,
                              fc2=lambda h: h, pool_size=mdl.pool_size)


def test_jit_grad_and_return_transform():
    m = L.SpatialTransformer(3, transform="similarity", out_size=(4, 4))
    v = m.init(jax.random.key(0), X)
    y = jax.jit(m.apply)(v, X)
    assert y.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(y, m.apply(v, X), rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda v: jnp.sum(m.apply(v, X) ** 2))(v)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves)
    # Identity start: the grid gradient reaches the final layer (non-zero at integer coords).
    assert float(jnp.abs(g["params"]["loc"]["fc2"]["bias"]).max()) > 0
    y2, aux = m.apply(v, X, return_transform=True)
    assert aux["matrix"].shape == (2, 2, 3) and aux["params"].shape == (2, 4)
    n = N.SpatialTransformer(3, transform="tps", rngs=nnx.Rngs(0))
    out, aux = nnx.jit(lambda mod, x: mod(x, return_transform=True))(n, jnp.asarray(X))
    assert out.shape == X.shape and aux["control_points"].shape == (2, 9, 2)
    gn = nnx.grad(lambda mod: jnp.sum(mod(jnp.asarray(X)) ** 2))(n)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(gn))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_large_values_finite(dtype):
    x = (jnp.asarray(X) * 1e4).astype(dtype)
    m = L.SpatialTransformer(3, dtype=dtype)
    v = m.init(jax.random.key(0), x)
    y, aux = m.apply(v, x, return_transform=True)
    assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y)))
    assert aux["grid"].dtype == jnp.float32


def test_reference_loads_same_tree():
    m = L.SpatialTransformer(3, transform="tps")
    load_into_torch(R.SpatialTransformer(3, transform="tps"), m.init(jax.random.key(0), X))


def test_bad_input():
    m = L.SpatialTransformer(3)
    with pytest.raises(ValueError, match=r"SpatialTransformer: x must be 3 channels"):
        m.init(jax.random.key(0), jnp.ones((1, 8, 8, 4)))
    with pytest.raises(ValueError, match=r"SpatialTransformer: x must be a floating-point"):
        m.init(jax.random.key(0), jnp.ones((1, 8, 8, 3), jnp.int32))
    # Named by the module since the property test (they named the internal helpers before).
    with pytest.raises(ValueError, match=r"SpatialTransformer: transform must be one of "
                                         r"'affine', 'similarity'"):
        L.SpatialTransformer(3, transform="rigid").init(jax.random.key(0), X)
    with pytest.raises(ValueError,
                       match=r"SpatialTransformer: out_size must be a pair of integers >= 1"):
        L.SpatialTransformer(3, out_size=(4,)).init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=r"SpatialTransformer: mode must be one of"):
        L.SpatialTransformer(3, mode="area").init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=r"SpatialTransformer: tps_grid_size must be"):
        N.SpatialTransformer(3, transform="tps", tps_grid_size=(1, 4), rngs=nnx.Rngs(0))
