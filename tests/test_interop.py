"""attention_jax.interop: one parameter tree for linen and nnx (load, export, their errors)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax import linen as L
from attention_jax import load_linen_variables, nnx_to_linen_variables
from attention_jax import nnx as N
from tests.parity import randomize_batch_stats

X = np.random.default_rng(0).normal(size=(2, 6, 5, 16)).astype(np.float32)


def _linen(m):
    v = m.init(jax.random.key(0), jnp.asarray(X))
    return randomize_batch_stats(dict(v), jax.random.key(1))


def test_load_linen_variables_then_equal_outputs():
    m = L.CoordinateAttention(16)  # params and batch_stats
    v = _linen(m)
    n = N.CoordinateAttention(16, rngs=nnx.Rngs(5))
    assert load_linen_variables(n, v) is n
    n.eval()
    np.testing.assert_array_equal(np.asarray(n(jnp.asarray(X))), np.asarray(m.apply(v, X)))


def test_nnx_to_linen_round_trip():
    n = N.SelectiveKernel(16, rngs=nnx.Rngs(2))
    v = nnx_to_linen_variables(n)
    assert set(v) == {"params", "batch_stats"}
    n.eval()
    m = L.SelectiveKernel(16)
    np.testing.assert_array_equal(np.asarray(m.apply(v, X)), np.asarray(n(jnp.asarray(X))))
    back = N.SelectiveKernel(16, rngs=nnx.Rngs(9))
    load_linen_variables(back, v)
    for a, b in zip(jax.tree_util.tree_leaves(nnx.state(back)),
                    jax.tree_util.tree_leaves(nnx.state(n)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_batch_stats_collection_without_batch_norm():
    v = nnx_to_linen_variables(N.SqueezeExcite(16, rngs=nnx.Rngs(0)))
    assert set(v) == {"params"} and set(v["params"]) == {"fc1", "fc2"}
    v = nnx_to_linen_variables(N.ChannelSelfAttention(4, rngs=nnx.Rngs(0)))
    assert set(v["params"]) == {"gamma"}


def test_load_errors_name_the_path():
    v = _linen(L.SqueezeExcite(16))
    with pytest.raises(ValueError, match=r"load_linen_variables: variables must hold the "
                       r"module's parameter tree, got missing \[\"\['fc2'\]\['bias'\]\"\]"):
        params = {**v["params"], "fc2": {"kernel": v["params"]["fc2"]["kernel"]}}
        load_linen_variables(N.SqueezeExcite(16, rngs=nnx.Rngs(0)), {"params": params})
    with pytest.raises(ValueError, match=r"and unexpected \[\"\['extra'\]\"\]"):
        load_linen_variables(N.SqueezeExcite(16, rngs=nnx.Rngs(0)),
                             {"params": {**v["params"], "extra": jnp.ones(1)}})
    with pytest.raises(ValueError, match=r"load_linen_variables: \['fc1'\]\['bias'\] must have "
                       r"shape \(4,\), got \(8,\)"):
        load_linen_variables(N.SqueezeExcite(16, rd_channels=4, rngs=nnx.Rngs(0)), v)


def test_load_leaves_module_untouched_on_error():
    n = N.SqueezeExcite(16, rngs=nnx.Rngs(0))
    before = [np.asarray(a) for a in jax.tree_util.tree_leaves(nnx.state(n))]
    with pytest.raises(ValueError):
        load_linen_variables(n, {"params": {}})
    after = [np.asarray(a) for a in jax.tree_util.tree_leaves(nnx.state(n))]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
