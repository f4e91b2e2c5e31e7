import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

from attention_jax import functional as F


@pytest.mark.parametrize(
    "name,ref",
    [("sigmoid", torch.sigmoid), ("hard_sigmoid", torch.nn.functional.hardsigmoid),
     ("tanh", torch.tanh)],
)
def test_gates_match_torch(name, ref):
    x = np.linspace(-6, 6, 41, dtype=np.float32)
    np.testing.assert_allclose(F.gate(x, kind=name), ref(torch.from_numpy(x)).numpy(), atol=1e-6)
    np.testing.assert_allclose(F.get_gate(name)(x), F.gate(x, kind=name))


@pytest.mark.parametrize("name,ref", [("relu", torch.relu), ("silu", torch.nn.functional.silu),
                                      ("gelu", torch.nn.functional.gelu),
                                      ("hard_swish", torch.nn.functional.hardswish)])
def test_acts_match_torch(name, ref):
    x = np.linspace(-6, 6, 41, dtype=np.float32)
    np.testing.assert_allclose(F.get_act(name)(x), ref(torch.from_numpy(x)).numpy(), atol=1e-6)


def test_unknown_gate_lists_choices():
    with pytest.raises(ValueError, match=r"get_gate: gate must be a callable or one of 'sigmoid'"):
        F.get_gate("sigmoidd")
    with pytest.raises(ValueError, match=r"gate: kind must be .* got 'nope'"):
        F.gate(jnp.ones(3), kind="nope")


def test_rescale_broadcast_and_errors():
    x = jnp.ones((2, 3, 3, 4), jnp.bfloat16)
    w = jnp.full((2, 1, 1, 4), 0.5, jnp.float32)
    out = F.rescale(x, w)
    assert out.dtype == jnp.bfloat16 and out.shape == x.shape
    with pytest.raises(ValueError, match=r"rescale: weights must be broadcastable to x's shape"):
        F.rescale(x, jnp.ones((2, 1, 1, 5)))
    with pytest.raises(ValueError, match=r"rescale: weights must be broadcastable"):
        F.rescale(x, jnp.ones((2, 2, 3, 3, 4)))


def test_branch_softmax(x64):
    logits = jnp.array([[[1e4, 0.0], [-1e4, 3.0]]], jnp.bfloat16)  # (1, M=2, C=2)
    w = F.branch_softmax(logits, axis=1)
    assert w.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(w)))
    np.testing.assert_allclose(np.asarray(w, np.float32).sum(1), 1.0, atol=1e-2)
    z = jnp.arange(6.0, dtype=jnp.float64).reshape(1, 3, 2) / 3
    check_grads(lambda z: F.branch_softmax(z, axis=1), (z,), order=2)
    with pytest.raises(ValueError, match=r"branch_softmax: axis must be in \[-3, 3\), got 3"):
        F.branch_softmax(logits.astype(jnp.float32)[..., None][..., 0], axis=3)


@pytest.mark.parametrize("c", [1, 2, 16, 64, 128, 256, 512, 1024, 2048])
def test_eca_kernel_size_formula(c):
    t = int(abs((math.log2(c) + 1) / 2))
    k = F.eca_kernel_size(c)
    assert k % 2 == 1 and k == (t if t % 2 else t + 1)
    assert F.eca_kernel_size(256) == 5 and F.eca_kernel_size(64) == 3


def test_make_divisible_and_reduced_channels():
    assert F.make_divisible(64 / 16, divisor=8) == 8
    assert F.make_divisible(37, divisor=8) == 40
    assert F.reduced_channels("f", 256, rd_ratio=1 / 16, rd_channels=None, rd_divisor=8) == 16
    assert F.reduced_channels("f", 256, rd_ratio=1 / 16, rd_channels=7, rd_divisor=8) == 7
    assert F.reduced_channels("f", 48, rd_ratio=1 / 16, rd_channels=None, rd_divisor=1) == 3
    with pytest.raises(ValueError, match=r"f: rd_ratio must be large enough"):
        F.reduced_channels("f", 8, rd_ratio=1 / 16, rd_channels=None, rd_divisor=1)
    with pytest.raises(ValueError, match=r"f: rd_channels must be an integer >= 1, got 0"):
        F.reduced_channels("f", 8, rd_ratio=1 / 16, rd_channels=0, rd_divisor=8)


def test_gate_grads_under_jit(x64):
    for name in ("sigmoid", "hard_sigmoid", "tanh"):
        f = jax.jit(lambda z, n=name: F.gate(z, kind=n))
        check_grads(f, (jnp.array([-2.2, 0.3, 1.7], jnp.float64),), order=1)
