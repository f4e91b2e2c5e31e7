"""Hybrid attention modules (CBAM, BAM, coordinate attention): parity with PyTorch references,
linen == nnx (eval and train mode), jit/grad/vmap, low precision, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax import linen as L
from attention_jax import nnx as N
from attention_jax import nnx_to_linen_variables
from attention_jax.torch_reference import hybrid as R
from tests.parity import check_linen_equals_nnx, check_module_parity, randomize_batch_stats

X = np.random.default_rng(0).normal(size=(2, 6, 6, 32)).astype(np.float32)
XS = np.random.default_rng(1).normal(size=(2, 7, 5, 32)).astype(np.float32)  # H != W

# name -> (class, kwargs for linen and nnx, torch reference factory, input)
CASES = {
    "channel_gate": ("ChannelGate", {"rd_ratio": 0.25}, lambda: R.ChannelGate(32, 8), XS),
    "channel_gate_bias": ("ChannelGate", {"rd_channels": 4, "bias": True},
                          lambda: R.ChannelGate(32, 4, bias=True), XS),
    "spatial_gate": ("SpatialGate", {}, lambda: R.SpatialGate(7), XS),
    "spatial_gate_k3": ("SpatialGate", {"kernel_size": 3}, lambda: R.SpatialGate(3), XS),
    "cbam": ("CBAM", {}, lambda: R.CBAM(32, 8), XS),
    "cbam_k5_bias": ("CBAM", {"kernel_size": 5, "bias": True, "rd_channels": 4},
                     lambda: R.CBAM(32, 4, kernel_size=5, bias=True), XS),
    "bam_paper": ("BAM", {}, lambda: R.BAM(32, 8), X),
    "bam_official": ("BAM", {"combine": "official"}, lambda: R.BAM(32, 8, combine="official"), X),
    "bam_dilation2": ("BAM", {"dilation": 2, "rd_channels": 4},
                      lambda: R.BAM(32, 4, dilation=2), X),
    "ca": ("CoordinateAttention", {}, lambda: R.CoordinateAttention(32, 8), XS),
    "ca_official": ("CoordinateAttention", {"act": "hard_swish", "rd_ratio": 1 / 32},
                    lambda: R.CoordinateAttention(32, 8, act="hard_swish"), XS),
}


@pytest.mark.parametrize("case", CASES)
def test_parity_and_nnx(case):
    cls, kw, ref, x = CASES[case]
    m = getattr(L, cls)(32, **kw)
    v = check_module_parity(m, ref(), x, rtol=1e-5, atol_rel=1e-5)
    n = getattr(N, cls)(32, **kw, rngs=nnx.Rngs(1))
    check_linen_equals_nnx(m, n, x, v)


def test_bam_combines_differ():
    """The two combinations are really different computations on the same weights."""
    v = L.BAM(32).init(jax.random.key(0), X)
    a = L.BAM(32).apply(v, X)
    b = L.BAM(32, combine="official").apply(v, X)
    assert float(jnp.abs(a - b).max()) > 1e-3


def test_spatial_gate_applies_sigmoid():
    """Catches the known port bug (raw conv logits used as weights): with large conv weights
    the logits are far outside [0, 1], yet every weight x_out / x_in must lie in (0, 1)."""
    m = L.SpatialGate(32)
    v = m.init(jax.random.key(0), X)
    v = jax.tree_util.tree_map(lambda a: a, v)
    v["params"]["conv"]["kernel"] = v["params"]["conv"]["kernel"] * 50.0
    y = np.asarray(m.apply(v, X))
    ratio = y / X
    assert ratio.min() >= 0.0 and ratio.max() <= 1.0
    assert ratio.max() > 0.99 and ratio.min() < 0.01  # saturated on both sides
    # Zero kernel: logits are the BN shift, so the weight is exactly sigmoid(bn(0)).
    v["params"]["conv"]["kernel"] = jnp.zeros_like(v["params"]["conv"]["kernel"])
    bn = v["batch_stats"]["bn"]
    logit = (0.0 - bn["mean"]) / jnp.sqrt(bn["var"] + 1e-5) * v["params"]["bn"]["scale"] \
        + v["params"]["bn"]["bias"]
    np.testing.assert_allclose(m.apply(v, X), X * jax.nn.sigmoid(logit), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls,kw", [("CBAM", {}), ("BAM", {}), ("CoordinateAttention", {})])
def test_train_mode_batch_stats_linen_equals_nnx(cls, kw):
    """In train mode both APIs normalise with batch statistics and update the running ones
    identically (same momentum), starting from the same non-trivial state."""
    x = X if cls == "BAM" else XS
    m = getattr(L, cls)(32, **kw)
    v = randomize_batch_stats(dict(m.init(jax.random.key(0), x)), jax.random.key(5))
    n = getattr(N, cls)(32, **kw, rngs=nnx.Rngs(0))
    check_linen_equals_nnx(m, n, x, v)  # loads v into n
    n.train()
    y_lin, upd = m.apply(v, x, train=True, mutable=["batch_stats"])
    y_nnx = n(x)
    np.testing.assert_allclose(y_nnx, y_lin, rtol=1e-5, atol=1e-5)
    new_lin = upd["batch_stats"]
    new_nnx = nnx_to_linen_variables(n)["batch_stats"]
    flat_lin = jax.tree_util.tree_leaves_with_path(new_lin)
    flat_nnx = dict(jax.tree_util.tree_leaves_with_path(new_nnx))
    assert len(flat_lin) == len(flat_nnx) > 0
    for path, a in flat_lin:
        np.testing.assert_allclose(flat_nnx[path], a, rtol=1e-6, atol=1e-6)
    # The statistics did move, and train-mode output differs from eval-mode output.
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), new_lin,
                                   v["batch_stats"])
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-4
    assert float(jnp.abs(y_lin - m.apply(v, x)).max()) > 1e-4


MODULES = {
    "ChannelGate": {},
    "SpatialGate": {},
    "CBAM": {},
    "BAM": {},
    "CoordinateAttention": {},
}


@pytest.mark.parametrize("cls", MODULES)
def test_jit_grad_vmap(cls):
    m = getattr(L, cls)(32, **MODULES[cls])
    v = m.init(jax.random.key(0), X)
    y = jax.jit(m.apply)(v, X)
    np.testing.assert_allclose(y, m.apply(v, X), rtol=1e-5, atol=1e-6)
    g = jax.jit(jax.grad(lambda v, x: jnp.sum(m.apply(v, x) ** 2), argnums=(0, 1)))(v, X)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g))
    assert float(jnp.abs(g[1]).sum()) > 0
    yv = jax.vmap(lambda a: m.apply(v, a[None])[0])(X)
    np.testing.assert_allclose(yv, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", MODULES)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_large_values_finite(cls, dtype):
    # max |x| = 1e4: BAM's 1 + sigmoid(.) may double its input, and 2 * 3.9e4 (the max of
    # X * 1e4) is past float16's 65504 by construction, not by a numerical fault.
    x = (jnp.asarray(X) / np.abs(X).max() * 1e4).astype(dtype)
    m = getattr(L, cls)(32, **MODULES[cls], dtype=dtype)
    v = m.init(jax.random.key(0), x)
    for train in (False, True):
        y = m.apply(v, x, train=train, mutable=["batch_stats"])[0] if train else m.apply(v, x)
        assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y))), train
    n = getattr(N, cls)(32, **MODULES[cls], dtype=dtype, rngs=nnx.Rngs(0))
    n.eval()
    y2 = n(x)
    assert y2.dtype == dtype and bool(jnp.all(jnp.isfinite(y2)))


@pytest.mark.parametrize("cls", MODULES)
def test_bad_rank(cls):
    with pytest.raises(ValueError, match=rf"{cls}: x must be at least rank 3 \(\.\.\., H, W, C\)"):
        getattr(L, cls)(32).init(jax.random.key(0), jnp.ones((6, 32)))


@pytest.mark.parametrize("cls", MODULES)
def test_bad_channels(cls):
    with pytest.raises(ValueError, match=rf"{cls}: x must be 32 channels"):
        getattr(L, cls)(32).init(jax.random.key(0), jnp.ones((1, 6, 6, 16)))
    n = getattr(N, cls)(32, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=rf"{cls}: x must be 32 channels"):
        n(jnp.ones((1, 6, 6, 16)))


@pytest.mark.parametrize("cls", MODULES)
def test_bad_integer_dtype(cls):
    with pytest.raises(ValueError, match=rf"{cls}: x must be a floating-point array"):
        getattr(L, cls)(32).init(jax.random.key(0), jnp.ones((1, 6, 6, 32), jnp.int32))


@pytest.mark.parametrize("cls", ["ChannelGate", "CBAM", "BAM", "CoordinateAttention"])
def test_bad_rd_channels(cls):
    # CBAM's errors name CBAM, also those of the ChannelGate it builds.
    with pytest.raises(ValueError, match=rf"{cls}: rd_channels must be an integer >= 1, got 0"):
        getattr(L, cls)(32, rd_channels=0).init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=rf"{cls}: rd_channels must be an integer >= 1, got 0"):
        getattr(N, cls)(32, rd_channels=0, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("cls", ["SpatialGate", "CBAM"])
@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_even_spatial_kernel(cls, api):
    msg = rf"{cls}: kernel_size must be an odd positive integer, got 6"
    with pytest.raises(ValueError, match=msg):
        if api == "linen":
            getattr(L, cls)(32, kernel_size=6).init(jax.random.key(0), X)
        else:
            getattr(N, cls)(32, kernel_size=6, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("cls", MODULES)
def test_unknown_gate(cls):
    """An unknown gate is named by the module, and nnx refuses it at construction."""
    msg = rf"{cls}: gate must be a callable or one of 'sigmoid'"
    with pytest.raises(ValueError, match=msg):
        getattr(L, cls)(32, gate="sigmoud").init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=msg):
        getattr(N, cls)(32, gate="sigmoud", rngs=nnx.Rngs(0))


def test_bam_unknown_combine():
    msg = r"BAM: combine must be one of 'paper', 'official', got 'sum'"
    with pytest.raises(ValueError, match=msg):
        L.BAM(32, combine="sum").init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=msg):
        N.BAM(32, combine="sum", rngs=nnx.Rngs(0))
