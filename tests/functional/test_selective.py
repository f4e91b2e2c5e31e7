"""Pure selective-attention functions: r-softmax, selective kernel and split attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from attention_jax import functional as F
from attention_jax.torch_reference.selective import RSoftMax
from tests.gradcheck import check_grads
from tests.parity import assert_close, kernel_to_torch, to_torch

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("radix,card", [(1, 1), (1, 4), (2, 1), (2, 4), (4, 2)])
def test_radix_softmax_matches_official_rsoftmax(radix, card):
    logits = RNG.normal(size=(3, radix * 16)).astype(np.float32)
    ours = F.radix_softmax(jnp.asarray(logits), radix=radix, cardinality=card)
    ref = RSoftMax(radix, card)(torch.from_numpy(logits)).numpy()
    assert_close(ours, ref)
    if radix > 1:  # weights of one channel across the R splits sum to one
        sums = np.asarray(ours).reshape(3, radix, 16).sum(1)
        np.testing.assert_allclose(sums, 1.0, rtol=1e-6)


def test_radix_softmax_keeps_leading_axes_and_grads(x64):
    z = jnp.asarray(RNG.normal(size=(2, 1, 1, 24)))
    assert F.radix_softmax(z, radix=3, cardinality=2).shape == z.shape
    check_grads(lambda t: F.radix_softmax(t, radix=3, cardinality=2), (z,), order=1,
                modes=("rev",))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_radix_softmax_low_precision_large_logits_finite(dtype):
    z = (jnp.asarray(RNG.normal(size=(2, 32))) * 1e4).astype(dtype)
    w = F.radix_softmax(z, radix=2, cardinality=2)
    assert w.dtype == dtype and bool(jnp.all(jnp.isfinite(w)))


def test_radix_softmax_bad_input():
    with pytest.raises(ValueError, match=r"radix_softmax: radix must be an integer >= 1, got 0"):
        F.radix_softmax(jnp.ones((2, 8)), radix=0)
    with pytest.raises(ValueError, match=r"radix_softmax: logits must be last axis divisible by "
                                         r"radix \* cardinality = 6"):
        F.radix_softmax(jnp.ones((2, 8)), radix=3, cardinality=2)
    with pytest.raises(ValueError, match=r"radix_softmax: logits must be an array"):
        F.radix_softmax([1.0, 2.0], radix=2)


# Explicit-weight layers: the functional forwards take any callables.
def _dense(w):
    return lambda t: jnp.einsum("nhwc,cd->nhwd", t, w)


def _conv3(w, dilation):
    return lambda t: jax.lax.conv_general_dilated(
        t, w, (1, 1), [(dilation, dilation)] * 2, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _sk_params(c=4, d=3, m=2, dtype=np.float64):
    r = np.random.default_rng(1)
    convs = [jnp.asarray(r.normal(size=(3, 3, c, c)) * 0.3, dtype) for _ in range(m)]
    return convs, jnp.asarray(r.normal(size=(c, d)), dtype), jnp.asarray(r.normal(size=(d, m * c)),
                                                                         dtype)


def _sk(x, convs, wr, ws):
    return F.selective_kernel(x, convs=[_conv3(w, i + 1) for i, w in enumerate(convs)],
                              reduce=_dense(wr), select=_dense(ws), act="silu")


def test_selective_kernel_matches_explicit_formula():
    convs, wr, ws = _sk_params(dtype=np.float32)
    x = jnp.asarray(RNG.normal(size=(2, 5, 5, 4)), jnp.float32)
    u = [jax.nn.silu(_conv3(w, i + 1)(x)) for i, w in enumerate(convs)]
    s = (u[0] + u[1]).mean((1, 2))
    a = jax.nn.softmax((jax.nn.silu(s @ wr) @ ws).reshape(2, 2, 4), axis=1)
    want = u[0] * a[:, 0, None, None] + u[1] * a[:, 1, None, None]
    assert_close(_sk(x, convs, wr, ws), want)


def test_selective_kernel_grads(x64):
    convs, wr, ws = _sk_params()
    x = jnp.asarray(RNG.normal(size=(2, 4, 4, 4)))
    check_grads(lambda x, c0, c1, wr, ws: _sk(x, [c0, c1], wr, ws), (x, *convs, wr, ws),
                order=1, modes=("rev",))


def test_selective_kernel_one_branch_is_identity_selection():
    convs, wr, ws = _sk_params(m=1, dtype=np.float32)
    x = jnp.asarray(RNG.normal(size=(1, 4, 4, 4)), jnp.float32)
    assert_close(_sk(x, convs, wr, ws), jax.nn.silu(_conv3(convs[0], 1)(x)))


def test_selective_kernel_jit_vmap():
    convs, wr, ws = _sk_params(dtype=np.float32)
    x = jnp.asarray(RNG.normal(size=(3, 4, 4, 4)), jnp.float32)
    y = _sk(x, convs, wr, ws)
    assert_close(jax.jit(_sk)(x, convs, wr, ws), y)
    yv = jax.vmap(lambda a: _sk(a[None], convs, wr, ws)[0])(x)
    assert_close(yv, y)


def test_selective_kernel_bad_input():
    convs, wr, ws = _sk_params(dtype=np.float32)
    x = jnp.ones((1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"selective_kernel: convs must be a non-empty sequence "
                                         r"of layers \(M >= 1\)"):
        F.selective_kernel(x, convs=[], reduce=_dense(wr), select=_dense(ws))
    with pytest.raises(ValueError, match=r"selective_kernel: norms must be 2 layers"):
        F.selective_kernel(x, convs=[_conv3(c, 1) for c in convs], norms=[lambda t: t],
                           reduce=_dense(wr), select=_dense(ws))
    with pytest.raises(ValueError, match=r"selective_kernel: select must be a layer returning "
                                         r"shape \(1, 1, 1, 8\)"):
        F.selective_kernel(x, convs=[_conv3(c, 1) for c in convs], reduce=_dense(wr),
                           select=_dense(ws[:, :4]))
    with pytest.raises(ValueError, match=r"selective_kernel: x must be at least rank 3"):
        F.selective_kernel(jnp.ones((4, 4)), convs=[lambda t: t], reduce=_dense(wr),
                           select=_dense(ws))


def _splat(x, wc, w1, w2, radix, card):
    def grouped(w, groups):
        return lambda t: jax.lax.conv_general_dilated(
            t, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups)

    return F.split_attention(x, conv=grouped(wc, radix * card), reduce=grouped(w1, card),
                             expand=grouped(w2, card), radix=radix, cardinality=card)


def _splat_params(cin=8, c=4, d=4, radix=2, card=2, dtype=np.float64):
    r = np.random.default_rng(2)
    wc = jnp.asarray(r.normal(size=(3, 3, cin // (radix * card), radix * c)) * 0.3, dtype)
    w1 = jnp.asarray(r.normal(size=(1, 1, c // card, d)), dtype)
    w2 = jnp.asarray(r.normal(size=(1, 1, d // card, radix * c)), dtype)
    return wc, w1, w2


@pytest.mark.parametrize("radix,card", [(2, 2), (1, 2), (4, 1)])
def test_split_attention_matches_official_formula(radix, card):
    wc, w1, w2 = _splat_params(radix=radix, card=card, dtype=np.float32)
    x = RNG.normal(size=(2, 5, 5, 8)).astype(np.float32)
    ours = _splat(jnp.asarray(x), wc, w1, w2, radix, card)
    # Official SplAtConv2d in torch with the same weights (no BN).
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    y = torch.relu(torch.nn.functional.conv2d(xt, to_torch(kernel_to_torch(wc)),
                                              padding=1, groups=radix * card))
    splits = torch.split(y, y.shape[1] // radix, 1)
    gap = sum(splits).mean((2, 3), keepdim=True)
    z = torch.relu(torch.nn.functional.conv2d(gap, to_torch(kernel_to_torch(w1)),
                                              groups=card))
    a = RSoftMax(radix, card)(torch.nn.functional.conv2d(
        z, to_torch(kernel_to_torch(w2)), groups=card)).view(2, -1, 1, 1)
    atts = torch.split(a, y.shape[1] // radix, 1)
    ref = sum(t * s for t, s in zip(atts, splits, strict=True)).permute(0, 2, 3, 1).numpy()
    assert_close(ours, ref)


def test_split_attention_grads(x64):
    # A fixed seed (chosen when the module's RNG was still shared across tests) and eps = 1e-6:
    # the ReLU in the attention branch has a kink, and the default eps = 1e-4 central
    # difference straddled one for some inputs (0.35% off).
    wc, w1, w2 = _splat_params()
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 4, 4, 8)))
    check_grads(lambda *a: _splat(*a, 2, 2), (x, wc, w1, w2), order=1, modes=("rev",),
                eps=1e-6)


def test_split_attention_jit_vmap():
    wc, w1, w2 = _splat_params(dtype=np.float32)
    x = jnp.asarray(RNG.normal(size=(3, 4, 4, 8)), jnp.float32)
    y = _splat(x, wc, w1, w2, 2, 2)
    assert_close(jax.jit(_splat, static_argnums=(4, 5))(x, wc, w1, w2, 2, 2), y)
    assert_close(jax.vmap(lambda a: _splat(a[None], wc, w1, w2, 2, 2)[0])(x), y)


def test_split_attention_bad_input():
    wc, w1, w2 = _splat_params(dtype=np.float32)
    x = jnp.ones((1, 4, 4, 8))
    with pytest.raises(ValueError, match=r"split_attention: conv must be a layer whose output "
                                         r"channels are divisible by radix \* cardinality = 3"):
        F.split_attention(x, conv=lambda t: t, reduce=lambda t: t, expand=lambda t: t, radix=3)
    with pytest.raises(ValueError, match=r"split_attention: radix must be an integer >= 1"):
        F.split_attention(x, conv=lambda t: t, reduce=lambda t: t, expand=lambda t: t, radix=0)
    with pytest.raises(ValueError, match=r"split_attention: expand must be a layer returning"):
        F.split_attention(x, conv=lambda t: t, reduce=lambda t: t,
                          expand=lambda t: t[..., :2], radix=2)
