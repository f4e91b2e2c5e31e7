"""The layer factories (attention_jax.linen.layers, attention_jax.nnx.layers): BatchNorm with
PyTorch's numerics in train and eval mode, conv with PyTorch's padding, linen == nnx."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from attention_jax.interop import load_linen_variables
from attention_jax.linen import layers as LL
from attention_jax.nnx import layers as NL
from tests.parity import assert_close, nchw_to_nhwc, nhwc_to_nchw

RNG = np.random.default_rng(0)
C = 3
X = (RNG.normal(size=(4, 5, 6, C)) * 2.0 + 0.5).astype(np.float32)
EPS32 = float(np.finfo(np.float32).eps)


def _torch_bn(scale, bias, mean=None, var=None, dtype=torch.float32):
    bn = torch.nn.BatchNorm2d(C).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(np.asarray(scale, np.float64)))
        bn.bias.copy_(torch.from_numpy(np.asarray(bias, np.float64)))
        if mean is not None:
            bn.running_mean.copy_(torch.from_numpy(np.asarray(mean, np.float64)))
            bn.running_var.copy_(torch.from_numpy(np.asarray(var, np.float64)))
    return bn


def _linen_variables(seed=1):
    """Random scale/bias and running statistics (the init ones are 1, 0, 0, 1)."""
    k = jax.random.split(jax.random.key(seed), 4)
    params = {"scale": 1.0 + 0.3 * jax.random.normal(k[0], (C,)),
              "bias": 0.3 * jax.random.normal(k[1], (C,))}
    stats = {"mean": jax.random.normal(k[2], (C,)),
             "var": jax.random.uniform(k[3], (C,), minval=0.5, maxval=1.5)}
    return {"params": params, "batch_stats": stats}


def _nnx_bn(v):
    bn = NL.batch_norm(C, rngs=nnx.Rngs(0))
    load_linen_variables(bn, v)
    return bn


def test_batch_norm_is_pytorchs_configuration():
    lin = LL.batch_norm()
    assert (lin.momentum, lin.epsilon, lin.use_fast_variance) == (0.9, 1e-5, False)
    n = NL.batch_norm(C, rngs=nnx.Rngs(0))
    assert (n.momentum, n.epsilon, n.use_fast_variance) == (0.9, 1e-5, False)
    assert LL.batch_norm(momentum=0.99).momentum == 0.99
    assert NL.batch_norm(C, momentum=0.99, rngs=nnx.Rngs(0)).momentum == 0.99


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_batch_norm_eval_matches_torch(api):
    v = _linen_variables()
    p, s = v["params"], v["batch_stats"]
    if api == "linen":
        y = LL.batch_norm().apply(v, jnp.asarray(X), use_running_average=True)
    else:
        bn = _nnx_bn(v)
        bn.eval()
        y = bn(jnp.asarray(X))
    ref = _torch_bn(p["scale"], p["bias"], s["mean"], s["var"]).eval()
    assert_close(y, nchw_to_nhwc(ref(nhwc_to_nchw(X))), rtol=1e-5, atol_rel=1e-6)


def _train_step(api, v, x):
    """One training-mode call: (output, new running mean, new running var)."""
    if api == "linen":
        y, upd = LL.batch_norm().apply(v, jnp.asarray(x), use_running_average=False,
                                       mutable=["batch_stats"])
        return y, upd["batch_stats"]["mean"], upd["batch_stats"]["var"]
    bn = _nnx_bn(v)
    bn.train()
    y = bn(jnp.asarray(x))
    return y, bn.mean[...], bn.var[...]


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_batch_norm_train_step_matches_torch(api):
    """Batch statistics normalise; the running mean moves as torch's (momentum 0.1 in torch's
    convention). The running variance: Flax averages in the biased batch variance, PyTorch the
    unbiased one, so torch's update is ours with var * n / (n - 1), n = N * H * W."""
    v = _linen_variables()
    p, s = v["params"], v["batch_stats"]
    y, mean, var = _train_step(api, v, X)
    ref = _torch_bn(p["scale"], p["bias"], s["mean"], s["var"]).train()
    yt = ref(nhwc_to_nchw(X))
    assert_close(y, nchw_to_nhwc(yt), rtol=1e-5, atol_rel=1e-6)
    assert_close(mean, ref.running_mean.numpy(), rtol=1e-6, atol_rel=1e-6)
    n = X.shape[0] * X.shape[1] * X.shape[2]
    batch_var_biased = (np.asarray(var, np.float64) - 0.9 * np.asarray(s["var"])) / 0.1
    torch_update = 0.9 * np.asarray(s["var"]) + 0.1 * batch_var_biased * n / (n - 1)
    assert_close(torch_update, ref.running_var.numpy(), rtol=1e-5, atol_rel=1e-6)
    assert_close(batch_var_biased, X.reshape(-1, C).astype(np.float64).var(0), rtol=1e-5)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_batch_norm_near_constant_batch(api):
    """A large mean and a small spread (100 + 0.01 noise): the one-pass mean(x^2) - mean(x)^2
    cancels to garbage in float32 (Flax's default: off by ~7 on outputs of scale 3); the
    two-pass variance, like PyTorch, matches a float64 run within the problem's conditioning
    (mean / std * eps32 per unit output)."""
    off, sd = 100.0, 1e-2
    x = (off + sd * RNG.normal(size=X.shape)).astype(np.float32)
    v = _linen_variables()
    p, s = v["params"], v["batch_stats"]
    y, _, var = _train_step(api, v, x)
    ref = _torch_bn(p["scale"], p["bias"], s["mean"], s["var"], torch.float64).train()
    y64 = nchw_to_nhwc(ref(nhwc_to_nchw(x).double()))
    bound = 10 * off / sd * EPS32 * float(np.abs(y64).max())
    np.testing.assert_allclose(np.asarray(y, np.float64), y64, rtol=0, atol=bound)
    fast = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5,
                        use_fast_variance=True)
    y_fast, _ = fast.apply(v, jnp.asarray(x), mutable=["batch_stats"])
    assert np.abs(np.asarray(y_fast, np.float64) - y64).max() > 100 * bound  # the test can fail


def test_batch_norm_linen_equals_nnx_train_and_eval():
    v = _linen_variables()
    y_l, mean_l, var_l = _train_step("linen", v, X)
    y_n, mean_n, var_n = _train_step("nnx", v, X)
    for a, b in ((y_l, y_n), (mean_l, mean_n), (var_l, var_n)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    bn = _nnx_bn(v)
    bn.eval()
    np.testing.assert_array_equal(
        np.asarray(LL.batch_norm().apply(v, jnp.asarray(X), use_running_average=True)),
        np.asarray(bn(jnp.asarray(X))))



@pytest.mark.parametrize("shape", [(0, 5, 6, C), (4, 0, 6, C)])
@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_batch_norm_empty_batch_keeps_running_statistics(api, shape):
    """A training step on no values leaves mean/var as they were, as PyTorch does (found by
    tests/test_properties.py: Flax averaged NaN into them)."""
    v = _linen_variables()
    s = v["batch_stats"]
    y, mean, var = _train_step(api, v, np.zeros(shape, np.float32))
    assert y.shape == shape
    ref = _torch_bn(v["params"]["scale"], v["params"]["bias"], s["mean"], s["var"]).train()
    ref(nhwc_to_nchw(np.zeros(shape, np.float32)))
    assert_close(mean, ref.running_mean.numpy(), rtol=0, atol_rel=0)
    assert_close(var, ref.running_var.numpy(), rtol=0, atol_rel=0)
    np.testing.assert_array_equal(np.asarray(mean), np.asarray(s["mean"]))


# --- conv -------------------------------------------------------------------------------------

XC = RNG.normal(size=(2, 8, 6, 4)).astype(np.float32)  # even sizes: stride 2 + padding matters

# (kwargs of our conv, kwargs of torch.nn.Conv2d), same kernel size and stride.
CONV_CASES = {
    "3x3_pad1": ({"kernel_size": 3, "padding": 1}, {"kernel_size": 3, "padding": 1}),
    "3x3_stride2_pad1": ({"kernel_size": 3, "strides": 2, "padding": 1},
                         {"kernel_size": 3, "stride": 2, "padding": 1}),
    "3x3_dil2_pad2_groups2": ({"kernel_size": 3, "padding": 2, "kernel_dilation": 2,
                               "feature_group_count": 2},
                              {"kernel_size": 3, "padding": 2, "dilation": 2, "groups": 2}),
    "1x5_pad0_2": ({"kernel_size": (1, 5), "padding": (0, 2)},
                   {"kernel_size": (1, 5), "padding": (0, 2)}),
    "1x1_default_pad0_nobias": ({"kernel_size": 1, "use_bias": False},
                                {"kernel_size": 1, "bias": False}),
    "3x3_default_pad0": ({"kernel_size": 3}, {"kernel_size": 3}),  # PyTorch's default: 0
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_torch_and_nnx(case):
    ours, theirs = CONV_CASES[case]
    m = LL.conv(6, **ours)
    v = m.init(jax.random.key(0), jnp.asarray(XC))
    y = m.apply(v, jnp.asarray(XC))
    ref = torch.nn.Conv2d(4, 6, **theirs)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(np.array(v["params"]["kernel"]).transpose(3, 2, 0, 1)))
        if "bias" in v["params"]:
            ref.bias.copy_(torch.from_numpy(np.array(v["params"]["bias"])))
    assert_close(y, nchw_to_nhwc(ref(nhwc_to_nchw(XC))), rtol=1e-5, atol_rel=1e-6)
    n = NL.conv(4, 6, **ours, rngs=nnx.Rngs(0))
    load_linen_variables(n, v)
    np.testing.assert_array_equal(np.asarray(n(jnp.asarray(XC))), np.asarray(y))


def test_conv_1d_and_padding_forms():
    x = jnp.asarray(XC[:, 0])  # (N, L, C): a 1D conv
    m = LL.conv(2, (3,), padding=1, use_bias=False)
    v = m.init(jax.random.key(0), x)
    assert v["params"]["kernel"].shape == (3, 4, 2) and m.apply(v, x).shape == (2, 6, 2)
    same = LL.conv(2, 3, padding="SAME").init(jax.random.key(0), jnp.asarray(XC))
    explicit = LL.conv(2, 3, padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(
        np.asarray(explicit.apply(same, jnp.asarray(XC))),
        np.asarray(LL.conv(2, 3, padding=1).apply(same, jnp.asarray(XC))))


@pytest.mark.parametrize("padding", [-1, (1, 2, 3), [(1, 2, 3), (1, 1)], 1.5])
def test_conv_bad_padding(padding):
    with pytest.raises(ValueError, match=r"conv: padding must be"):
        LL.conv(2, 3, padding=padding)
    with pytest.raises(ValueError, match=r"conv: padding must be"):
        NL.conv(4, 2, 3, padding=padding, rngs=nnx.Rngs(0))
