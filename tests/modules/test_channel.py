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
from attention_jax.torch_reference import channel as R
from tests.parity import assert_close, check_linen_equals_nnx, check_module_parity

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
    with pytest.raises(ValueError,
                       match=r"SqueezeExcite: x must be at least rank 3 \(\.\.\., H, W, C\)"):
        m.init(jax.random.key(0), jnp.ones((5, 32)))
    with pytest.raises(ValueError, match=r"SqueezeExcite: x must be 32 channels"):
        m.init(jax.random.key(0), jnp.ones((1, 6, 5, 16)))
    with pytest.raises(ValueError, match=r"SqueezeExcite: x must be a floating-point array"):
        m.init(jax.random.key(0), jnp.ones((1, 6, 5, 32), jnp.int32))
    with pytest.raises(ValueError, match=r"SqueezeExcite: rd_ratio must be large enough"):
        L.SqueezeExcite(8, rd_divisor=1).init(jax.random.key(0), jnp.ones((1, 2, 2, 8)))
    with pytest.raises(ValueError, match=r"SqueezeExcite: gate must be a callable or one of"):
        L.SqueezeExcite(32, gate="sigmoud").init(jax.random.key(0), jnp.ones((1, 2, 2, 32)))
    with pytest.raises(ValueError, match=r"SqueezeExcite: rd_channels must be an integer >= 1"):
        N.SqueezeExcite(32, rd_channels=0, rngs=nnx.Rngs(0))


# --- ECA, gather-excite, global context, SOCA -------------------------------------------------

XS = np.random.default_rng(1).normal(size=(2, 7, 5, 32)).astype(np.float32)  # H != W

# name -> (kwargs shared by linen and nnx, torch reference factory, input)
CASES = {
    "eca": ("EfficientChannelAttention", {}, lambda: R.EfficientChannelAttention(32, 3), XS),
    "eca_k5": ("EfficientChannelAttention", {"kernel_size": 5},
               lambda: R.EfficientChannelAttention(32, 5), XS),
    "eca_gamma1": ("EfficientChannelAttention", {"gamma": 1.0},
                   lambda: R.EfficientChannelAttention(32, 7), XS),
    "ge_global_mlp": ("GatherExcite", {"rd_channels": 4}, lambda: R.GatherExcite(32, 4), XS),
    "ge_e2_mlp": ("GatherExcite", {"extent": 2, "rd_channels": 4},
                  lambda: R.GatherExcite(32, 4, extent=2), XS),
    "ge_e4_params": ("GatherExcite", {"extent": 4, "extra_params": True, "rd_channels": 4},
                     lambda: R.GatherExcite(32, 4, extent=4, extra_params=True), XS),
    "ge_e2_params_nomlp": ("GatherExcite", {"extent": 2, "extra_params": True, "use_mlp": False},
                           lambda: R.GatherExcite(32, None, extent=2, extra_params=True,
                                                  use_mlp=False), XS),
    "ge_global_params": ("GatherExcite", {"extra_params": True, "feat_size": (7, 5)},
                         lambda: R.GatherExcite(32, 8, extra_params=True, feat_size=(7, 5)), XS),
    "gc_add": ("GlobalContext", {}, lambda: R.GlobalContext(32, 8), XS),
    "gc_scale": ("GlobalContext", {"fuse_add": False, "fuse_scale": True, "rd_channels": 4},
                 lambda: R.GlobalContext(32, 4, fuse_add=False, fuse_scale=True), XS),
    "gc_both": ("GlobalContext", {"fuse_scale": True},
                lambda: R.GlobalContext(32, 8, fuse_scale=True), XS),
    # timm's byobnet 'gca': r = 8, rd_divisor 1, LayerNorm eps 1e-6 (its conv_attn bias: below).
    "gc_timm": ("GlobalContext", {"rd_ratio": 1 / 8, "rd_divisor": 1, "eps": 1e-6},
                lambda: R.GlobalContext(32, 4, eps=1e-6), XS),
    "soca": ("SecondOrderChannel", {}, lambda: R.SecondOrderChannel(32, 8), XS),
    "soca_it1_silu": ("SecondOrderChannel", {"iterations": 1, "act": "silu"},
                      lambda: R.SecondOrderChannel(32, 8, iterations=1, act=torch.nn.SiLU), XS),
    "soca_it8": ("SecondOrderChannel", {"iterations": 8},
                 lambda: R.SecondOrderChannel(32, 8, iterations=8), XS),
    # Fewer pixels (4) than channels (32): a rank-deficient covariance.
    "soca_rank_deficient": ("SecondOrderChannel", {}, lambda: R.SecondOrderChannel(32, 8),
                            XS[:, :2, :2]),
}


@pytest.mark.parametrize("case", CASES)
def test_parity_and_nnx(case):
    cls, kw, ref, x = CASES[case]
    m = getattr(L, cls)(32, **kw)
    v = check_module_parity(m, ref(), x, rtol=1e-5, atol_rel=1e-5)
    n = getattr(N, cls)(32, **kw, rngs=nnx.Rngs(1))
    check_linen_equals_nnx(m, n, x, v)


@pytest.mark.parametrize("extent", [0, 2, 4, 8])
def test_ge_parameter_free_matches_torch(extent):
    """GE-theta-minus (no parameters at all): parity of output and input gradient."""
    m = L.GatherExcite(32, extent=extent, use_mlp=False)
    v = m.init(jax.random.key(0), XS)
    assert not jax.tree_util.tree_leaves(v)
    ref = R.GatherExcite(32, None, extent=extent, use_mlp=False)
    xt = torch.from_numpy(XS).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    yt = ref(xt)
    cot = np.random.default_rng(extent).normal(size=XS.shape).astype(np.float32)
    (yt * torch.from_numpy(cot).permute(0, 3, 1, 2)).sum().backward()
    y, vjp = jax.vjp(lambda a: m.apply(v, a), jnp.asarray(XS))
    assert_close(y, yt.detach().permute(0, 2, 3, 1).numpy(), what="forward")
    assert_close(vjp(jnp.asarray(cot))[0], xt.grad.permute(0, 2, 3, 1).numpy(), what="grad x")
    n = N.GatherExcite(32, extent=extent, use_mlp=False, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(n(XS), y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 0, 5, 32), (2, 6, 0, 32)])
def test_ge_strided_gather_of_an_empty_map(shape):
    """extent > 0 on a map with no pixels: an empty output (avg_pool2d refused the empty map,
    naming itself; found by tests/test_properties.py)."""
    x = jnp.zeros(shape)
    m = L.GatherExcite(32, extent=2)
    assert m.apply(m.init(jax.random.key(0), X), x).shape == shape
    assert N.GatherExcite(32, extent=2, rngs=nnx.Rngs(0))(x).shape == shape


MODULES = {
    "EfficientChannelAttention": {},
    "GatherExcite": {"extent": 2, "extra_params": True},
    "GlobalContext": {"fuse_scale": True},
    "SecondOrderChannel": {},
}


@pytest.mark.parametrize("cls", MODULES)
def test_jit_grad_vmap(cls):
    m = getattr(L, cls)(32, **MODULES[cls])
    v = m.init(jax.random.key(0), XS)
    y = jax.jit(m.apply)(v, XS)
    np.testing.assert_allclose(y, m.apply(v, XS), rtol=1e-5, atol=1e-6)
    g = jax.jit(jax.grad(lambda v, x: jnp.sum(m.apply(v, x) ** 2), argnums=(0, 1)))(v, XS)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g))
    assert float(jnp.abs(g[1]).sum()) > 0
    yv = jax.vmap(lambda a: m.apply(v, a[None])[0])(XS)
    np.testing.assert_allclose(yv, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", MODULES)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_large_values_finite(cls, dtype):
    x = (jnp.asarray(XS) * 1e4).astype(dtype)
    m = getattr(L, cls)(32, **MODULES[cls], dtype=dtype)
    v = m.init(jax.random.key(0), x)
    y = m.apply(v, x)
    assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y)))
    n = getattr(N, cls)(32, **MODULES[cls], dtype=dtype, rngs=nnx.Rngs(0))
    n.eval()
    y2 = n(x)
    assert y2.dtype == dtype and bool(jnp.all(jnp.isfinite(y2)))


def test_soca_constant_feature_map_finite():
    """A constant map has a zero covariance: output and every gradient stay finite."""
    x = jnp.full((2, 4, 4, 32), 3.0, jnp.float32)
    m = L.SecondOrderChannel(32)
    v = m.init(jax.random.key(0), x)
    y = m.apply(v, x)
    assert bool(jnp.all(jnp.isfinite(y)))
    g = jax.grad(lambda v, x: jnp.sum(m.apply(v, x) ** 2), argnums=(0, 1))(v, x)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g))


@pytest.mark.parametrize("cls", MODULES)
def test_bad_rank(cls):
    with pytest.raises(ValueError, match=rf"{cls}: x must be at least rank 3 \(\.\.\., H, W, C\)"):
        getattr(L, cls)(32, **MODULES[cls]).init(jax.random.key(0), jnp.ones((5, 32)))


@pytest.mark.parametrize("cls", MODULES)
def test_bad_channels(cls):
    with pytest.raises(ValueError, match=rf"{cls}: x must be 32 channels"):
        getattr(L, cls)(32, **MODULES[cls]).init(jax.random.key(0), jnp.ones((1, 7, 5, 16)))
    n = getattr(N, cls)(32, **MODULES[cls], rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=rf"{cls}: x must be 32 channels"):
        n(jnp.ones((1, 7, 5, 16)))


@pytest.mark.parametrize("cls", MODULES)
def test_bad_integer_dtype(cls):
    with pytest.raises(ValueError, match=rf"{cls}: x must be a floating-point array"):
        getattr(L, cls)(32, **MODULES[cls]).init(jax.random.key(0),
                                                 jnp.ones((1, 7, 5, 32), jnp.int32))


@pytest.mark.parametrize("cls", ["GatherExcite", "GlobalContext", "SecondOrderChannel"])
def test_bad_rd_channels(cls):
    with pytest.raises(ValueError, match=rf"{cls}: rd_channels must be an integer >= 1, got 0"):
        getattr(L, cls)(32, rd_channels=0).init(jax.random.key(0), XS)
    with pytest.raises(ValueError, match=rf"{cls}: rd_channels must be an integer >= 1, got 0"):
        getattr(N, cls)(32, rd_channels=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=rf"{cls}: rd_ratio must be large enough"):
        getattr(N, cls)(8, rd_divisor=1, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_eca_even_kernel(api):
    msg = r"EfficientChannelAttention: kernel_size must be an odd positive integer, got 4"
    with pytest.raises(ValueError, match=msg):
        if api == "linen":
            L.EfficientChannelAttention(32, kernel_size=4).init(jax.random.key(0), XS)
        else:
            N.EfficientChannelAttention(32, kernel_size=4, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("cls", MODULES)
def test_unknown_gate(cls):
    """An unknown gate or act is named by the module, and nnx refuses it at construction."""
    msg = rf"{cls}: gate must be a callable or one of 'sigmoid'"
    with pytest.raises(ValueError, match=msg):
        getattr(L, cls)(32, **MODULES[cls], gate="sigmoud").init(jax.random.key(0), XS)
    with pytest.raises(ValueError, match=msg):
        getattr(N, cls)(32, **MODULES[cls], gate="sigmoud", rngs=nnx.Rngs(0))
    if cls != "EfficientChannelAttention":  # ECA has no hidden activation
        with pytest.raises(ValueError, match=rf"{cls}: act must be a callable or one of 'relu'"):
            getattr(N, cls)(32, **MODULES[cls], act="rleu", rngs=nnx.Rngs(0))


def test_ge_bad_options():
    with pytest.raises(ValueError, match=r"GatherExcite: extent must be 0 \(global\) or a power "
                                         r"of two >= 2, got 3"):
        N.GatherExcite(32, extent=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"GatherExcite: feat_size must be the input's \(H, W\)"):
        L.GatherExcite(32, extra_params=True).init(jax.random.key(0), XS)


def test_gc_eps_is_the_layer_norms():
    """At small inputs (LayerNorm variance ~1e-7) eps 1e-6 and 1e-5 give different outputs;
    ours follows torch's LayerNorm with the eps given."""
    x = XS * 1e-3
    m = L.GlobalContext(32, rd_channels=4, eps=1e-6)
    v = check_module_parity(m, R.GlobalContext(32, 4, eps=1e-6), x)
    default_eps = L.GlobalContext(32, rd_channels=4)
    assert not np.allclose(default_eps.apply(v, x), m.apply(v, x), rtol=1e-3, atol=0)


def test_gc_attn_bias_is_held_and_cancels():
    """timm's conv_attn has a bias (so its weights load): a constant logit, it cancels in the
    softmax over H*W, so the output ignores it and its gradient is rounding noise."""
    from tests.parity import load_into_torch

    m = L.GlobalContext(32, rd_channels=4, attn_bias=True)
    v = m.init(jax.random.key(0), XS)
    assert v["params"]["conv_attn"]["bias"].shape == (1,)
    shifted = jax.tree.map(lambda a: a, v)
    shifted["params"]["conv_attn"]["bias"] = jnp.full((1,), 3.0)
    np.testing.assert_allclose(m.apply(shifted, XS), m.apply(v, XS), rtol=1e-5, atol=1e-6)
    ref = R.GlobalContext(32, 4, attn_bias=True)
    load_into_torch(ref, shifted)
    out = ref(torch.from_numpy(XS).permute(0, 3, 1, 2)).detach().permute(0, 2, 3, 1).numpy()
    assert_close(m.apply(shifted, XS), out)
    g = jax.grad(lambda p: jnp.sum(m.apply({"params": p}, XS) ** 2))(shifted["params"])
    assert float(jnp.abs(g["conv_attn"]["bias"]).max()) <= 1e-5 * float(
        jnp.abs(g["conv_attn"]["kernel"]).max())
    check_linen_equals_nnx(m, N.GlobalContext(32, rd_channels=4, attn_bias=True,
                                              rngs=nnx.Rngs(0)), XS, shifted)


def test_gc_and_soca_bad_options():
    with pytest.raises(ValueError, match=r"GlobalContext: eps must be a finite number > 0, "
                                         r"got 0"):
        N.GlobalContext(32, eps=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"GlobalContext: eps must be a finite number > 0"):
        L.GlobalContext(32, eps=float("nan")).init(jax.random.key(0), XS)
    with pytest.raises(ValueError, match=r"GlobalContext: fuse_add / fuse_scale must be at least "
                                         r"one True, got both False"):
        N.GlobalContext(32, fuse_add=False, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"SecondOrderChannel: iterations must be an integer "
                                         r">= 1, got 0"):
        L.SecondOrderChannel(32, iterations=0).init(jax.random.key(0), XS)
