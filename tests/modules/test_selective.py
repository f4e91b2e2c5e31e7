"""SelectiveKernel (SK-Net) and SplitAttention (ResNeSt): parity with PyTorch, linen == nnx,
jit/grad/vmap, train-mode BatchNorm, bad input, low precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax import functional as F
from attention_jax import linen as L
from attention_jax import load_linen_variables
from attention_jax import nnx as N
from attention_jax.torch_reference import selective as R
from tests.parity import (
    assert_close,
    check_linen_equals_nnx,
    check_module_parity,
    load_into_torch,
    nchw_to_nhwc,
    nhwc_to_nchw,
)

X = np.random.default_rng(0).normal(size=(2, 7, 6, 16)).astype(np.float32)


@pytest.mark.parametrize("num_paths,groups,stride,out", [(2, 1, 1, None), (3, 4, 1, None),
                                                         (1, 1, 1, None), (2, 2, 2, 8)])
def test_sk_parity_and_nnx(num_paths, groups, stride, out):
    kw = {"num_paths": num_paths, "groups": groups, "stride": stride, "out_channels": out}
    m = L.SelectiveKernel(16, **kw)
    # d = max(make_divisible(out / 16, 8), L): out / 16 <= 1 rounds to 8 < L = 32.
    ref = R.SelectiveKernel(16, out, num_paths=num_paths, groups=groups, stride=stride,
                            rd_channels=32)
    v = check_module_parity(m, ref, X)
    check_linen_equals_nnx(m, N.SelectiveKernel(16, **kw, rngs=nnx.Rngs(1)), X, v)


@pytest.mark.parametrize("groups,stride", [(1, 1), (2, 2)])
def test_sk_split_input_parity_and_nnx(groups, stride):
    """timm's split_input (its SK-ResNet-18/34): branch m convolves the m-th channel half."""
    kw = {"split_input": True, "groups": groups, "stride": stride, "rd_channels": 8}
    m = L.SelectiveKernel(16, **kw)
    ref = R.SelectiveKernel(16, groups=groups, stride=stride, rd_channels=8, split_input=True)
    v = check_module_parity(m, ref, X)
    assert v["params"]["conv1"]["kernel"].shape == (3, 3, 8 // groups, 16)
    check_linen_equals_nnx(m, N.SelectiveKernel(16, **kw, rngs=nnx.Rngs(3)), X, v)


def test_sk_split_input_bad_channels():
    with pytest.raises(ValueError, match=r"SelectiveKernel: channels must be divisible by "
                                         r"num_paths \(split_input\)=3, got 16"):
        _init(L.SelectiveKernel(16, num_paths=3, split_input=True))
    with pytest.raises(ValueError, match=r"SelectiveKernel: channels / num_paths must be "
                                         r"divisible by groups=16, got 8"):
        N.SelectiveKernel(16, groups=16, split_input=True, rngs=nnx.Rngs(0))
    conv = lambda h: h  # noqa: E731
    with pytest.raises(ValueError, match=r"selective_kernel: x must be channels divisible by "
                                         r"the number of branches M=2 \(split_input\)"):
        F.selective_kernel(jnp.ones((1, 4, 4, 5)), convs=[conv, conv], reduce=conv,
                           select=conv, split_input=True)


def test_sk_paper_fields_width():
    """d = max(C / r, L): r = 1 / rd_ratio, L = rd_min_channels; rd_channels overrides both."""
    def width(c=256, **kw):
        v = jax.eval_shape(L.SelectiveKernel(c, **kw).init, jax.random.key(0),
                           jnp.ones((1, 4, 4, c)))
        return v["params"]["fc_reduce"]["kernel"].shape[-1]

    assert width() == 32  # 256 / 16 = 16 < L = 32
    assert width(rd_ratio=1 / 4) == 64
    assert width(rd_min_channels=8) == 16
    assert width(rd_channels=5) == 5
    assert width(200, rd_min_channels=8) == 16  # 12.5 rounds to the nearest multiple of 8
    assert width(320, rd_min_channels=8) == 24  # 20 -> 24


def test_splat_radix_grouped_parity_and_nnx():
    for radix, groups, stride, out in [(2, 1, 1, None), (1, 2, 1, None), (4, 2, 2, 8),
                                       (2, 4, 1, 32)]:
        kw = {"radix": radix, "groups": groups, "stride": stride, "out_channels": out}
        m = L.SplitAttention(16, **kw)
        # d = max(make_divisible(16 * radix / 16, 8), L): radix <= 4 rounds to 8 < L = 32.
        ref = R.SplitAttention(16, out, radix=radix, groups=groups, stride=stride,
                               rd_channels=32)
        v = check_module_parity(m, ref, X)
        check_linen_equals_nnx(m, N.SplitAttention(16, **kw, rngs=nnx.Rngs(2)), X, v)


def test_splat_resnest_widths_dilation_bias_parity():
    m = L.SplitAttention(16, rd_ratio=0.25, rd_min_channels=4, dilation=2, bias=True,
                         kernel_size=5)
    ref = R.SplitAttention(16, rd_channels=8, dilation=2, bias=True, kernel_size=5)
    check_module_parity(m, ref, X)


@pytest.mark.parametrize("name", ["SelectiveKernel", "SplitAttention"])
def test_train_mode_batch_stats_match_torch(name):
    """Training-mode BatchNorm (batch statistics) and running-stat updates agree with torch."""
    m = getattr(L, name)(16)
    ref = getattr(R, name)(16, rd_channels=32)
    v = m.init(jax.random.key(0), X)
    load_into_torch(ref, v)
    ref.train()
    y, upd = m.apply(v, X, train=True, mutable=["batch_stats"])
    yt = ref(nhwc_to_nchw(X))
    # BN over the pooled (N, 1, 1, d) code normalises 2 values per channel: a sharp function,
    # so float32 rounding is amplified; 1e-4 of the output scale.
    assert_close(y, nchw_to_nhwc(yt), rtol=1e-4, atol_rel=1e-4)
    n_pix = X.shape[0] * X.shape[1] * X.shape[2]
    for key, n in (("bn0", n_pix), ("fc_bn" if name == "SelectiveKernel" else "bn1", 2)):
        stats, bn = upd["batch_stats"][key], getattr(ref, key)
        assert_close(stats["mean"], bn.running_mean.numpy(), rtol=1e-4)
        # Flax updates the running variance with the biased batch variance, PyTorch with the
        # unbiased one (factor n / (n - 1)); the initial variance is 1 and momentum 0.9.
        unbiased = 0.9 + (np.asarray(stats["var"]) - 0.9) * n / (n - 1)
        assert_close(unbiased, bn.running_var.numpy(), rtol=1e-4)
    nm = getattr(N, name)(16, rngs=nnx.Rngs(0))
    load_linen_variables(nm, v)
    nm.train()
    np.testing.assert_allclose(np.asarray(nm(jnp.asarray(X))), np.asarray(y), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("name", ["SelectiveKernel", "SplitAttention"])
def test_jit_grad_vmap(name):
    m = getattr(L, name)(16)
    v = m.init(jax.random.key(0), X)
    y = m.apply(v, X)
    np.testing.assert_allclose(jax.jit(m.apply)(v, X), y, rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda p: m.apply({**v, "params": p}, X).sum())(v["params"])
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g))
    assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree_util.tree_leaves(g))
    yv = jax.vmap(lambda a: m.apply(v, a[None])[0])(X)
    np.testing.assert_allclose(yv, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["SelectiveKernel", "SplitAttention"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_large_values_finite(name, dtype):
    x = (jnp.asarray(X) * 1e4).astype(dtype)
    m = getattr(L, name)(16, dtype=dtype)
    v = m.init(jax.random.key(0), x)
    y = m.apply(v, x)
    assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y)))


def _init(m, c=16):
    return m.init(jax.random.key(0), jnp.ones((1, 4, 4, c)))


def test_sk_bad_num_paths():
    with pytest.raises(ValueError, match=r"SelectiveKernel: num_paths must be an integer >= 1, "
                                         r"got 0"):
        _init(L.SelectiveKernel(16, num_paths=0))
    with pytest.raises(ValueError, match=r"SelectiveKernel: num_paths must be an integer >= 1"):
        N.SelectiveKernel(16, num_paths=0, rngs=nnx.Rngs(0))


def test_sk_bad_groups():
    with pytest.raises(ValueError, match=r"SelectiveKernel: channels must be divisible by "
                                         r"groups=3, got 16"):
        _init(L.SelectiveKernel(16, groups=3))
    with pytest.raises(ValueError, match=r"SelectiveKernel: out_channels must be divisible by "
                                         r"groups=4, got 6"):
        N.SelectiveKernel(16, groups=4, out_channels=6, rngs=nnx.Rngs(0))


def test_sk_bad_input_shape():
    with pytest.raises(ValueError, match=r"SelectiveKernel: x must be 16 channels"):
        _init(L.SelectiveKernel(16), c=8)
    with pytest.raises(ValueError, match=r"SelectiveKernel: x must be at least rank 3"):
        L.SelectiveKernel(16).init(jax.random.key(0), jnp.ones((4, 16)))


def test_sk_bad_min_width():
    with pytest.raises(ValueError, match=r"SelectiveKernel: rd_min_channels must be an integer"):
        _init(L.SelectiveKernel(16, rd_min_channels=0))


def test_splat_radix_not_dividing_channels():
    with pytest.raises(ValueError, match=r"SplitAttention: channels must be divisible by "
                                         r"groups \* radix=3, got 16"):
        _init(L.SplitAttention(16, radix=3))
    with pytest.raises(ValueError, match=r"SplitAttention: channels must be divisible by "
                                         r"groups \* radix=6"):
        N.SplitAttention(16, radix=3, groups=2, rngs=nnx.Rngs(0))


def test_splat_bad_radix_groups_kernel():
    with pytest.raises(ValueError, match=r"SplitAttention: radix must be an integer >= 1"):
        _init(L.SplitAttention(16, radix=0))
    with pytest.raises(ValueError, match=r"SplitAttention: out_channels must be divisible by "
                                         r"groups=2, got 5"):
        _init(L.SplitAttention(16, groups=2, out_channels=5))
    with pytest.raises(ValueError, match=r"SplitAttention: kernel_size must be an odd"):
        _init(L.SplitAttention(16, kernel_size=4))
    with pytest.raises(ValueError, match=r"SplitAttention: rd_channels \(attention width\) must "
                                         r"be divisible by groups=4, got 6"):
        _init(L.SplitAttention(16, groups=4, rd_channels=6))


def test_registry_builds_by_name():
    import attention_jax as aj

    assert isinstance(aj.create_attention("sk", 32), L.SelectiveKernel)
    assert isinstance(aj.create_attention("splat", 32, api="nnx", rngs=nnx.Rngs(0)),
                      N.SplitAttention)
    x = jnp.ones((1, 5, 5, 32))
    m = aj.create_attention("sk", 32, num_paths=3, groups=8)
    assert m.apply(m.init(jax.random.key(0), x), x).shape == x.shape
