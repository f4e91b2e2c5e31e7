"""Pure channel-attention forwards and their pooling pieces: torch agreement, check_grads,
jit/vmap, numerically hard input, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from attention_jax import functional as F
from attention_jax.torch_reference import channel as R
from tests.gradcheck import check_grads
from tests.parity import assert_close, nchw_to_nhwc, nhwc_to_nchw

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 7, 5, 6)).astype(np.float32)


def _w(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) / np.sqrt(shape[0]))


def _x64(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float64)


# --- covariance pooling and the Newton-Schulz square root -------------------------------------

def test_covariance_pool_matches_official_form():
    xt = torch.from_numpy(X.astype(np.float64)).permute(0, 3, 1, 2)
    assert_close(F.covariance_pool(jnp.asarray(X)), R.covpool(xt).numpy(), rtol=1e-5)
    assert F.covariance_pool(X).shape == (2, 6, 6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_covariance_pool_low_precision_accumulates_in_float32(dtype):
    x = (jnp.asarray(X) * 1e4).astype(dtype)
    cov = F.covariance_pool(x)
    assert cov.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(cov)))
    ref = np.asarray(F.covariance_pool(x.astype(jnp.float32)))
    np.testing.assert_allclose(cov, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_newton_schulz_converges_to_matrix_sqrt(x64):
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))
    a = q @ np.diag([0.5, 0.8, 1.0, 1.5, 2.0]) @ q.T
    root = np.asarray(F.newton_schulz_sqrt(jnp.asarray(a), iterations=30))
    w, v = np.linalg.eigh(a)
    np.testing.assert_allclose(root, v @ np.diag(np.sqrt(w)) @ v.T, atol=1e-10)


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_newton_schulz_matches_reference(iterations, x64):
    a = np.asarray(F.covariance_pool(_x64((2, 4, 3, 5))))
    ours = F.newton_schulz_sqrt(jnp.asarray(a), iterations=iterations)
    ref = R.sqrtm_newton_schulz(torch.from_numpy(a.copy()), iterations).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_newton_schulz_rank_deficient_float32():
    """4 pixels, 32 channels: rank <= 3. Finite values and gradients; the square root squares
    back to the covariance; zero eigen-directions stay zero."""
    x = jnp.asarray(RNG.normal(size=(2, 2, 2, 32)), jnp.float32)
    cov = F.covariance_pool(x)
    root = F.newton_schulz_sqrt(cov, iterations=20)
    assert root.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(root)))
    np.testing.assert_allclose(root @ root, cov, atol=1e-4 * float(jnp.abs(cov).max()))
    g = jax.grad(lambda x: jnp.sum(F.newton_schulz_sqrt(F.covariance_pool(x)) ** 2))(x)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


def test_newton_schulz_zero_matrix_finite():
    z = jnp.zeros((2, 4, 4), jnp.float32)
    np.testing.assert_array_equal(F.newton_schulz_sqrt(z), z)
    g = jax.grad(lambda a: jnp.sum(F.newton_schulz_sqrt(a)))(z)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_covariance_and_sqrt_check_grads(x64):
    x = _x64((1, 3, 3, 4))
    check_grads(F.covariance_pool, (x,), order=2, modes=["rev"])
    a = F.covariance_pool(x) + 0.1 * jnp.eye(4)
    check_grads(lambda a: F.newton_schulz_sqrt(a, iterations=4), (a,), order=1,
                modes=["rev", "fwd"])


# --- avg_pool2d and nearest interpolation -----------------------------------------------------

@pytest.mark.parametrize("k,s,p,cip", [(3, 2, 1, False), (3, 2, 1, True), (7, 4, 3, False),
                                       (2, 2, 0, True)])
def test_avg_pool2d_matches_torch(k, s, p, cip):
    ours = F.avg_pool2d(X, kernel_size=k, stride=s, padding=p, count_include_pad=cip)
    ref = tF.avg_pool2d(nhwc_to_nchw(X), k, stride=s, padding=p, count_include_pad=cip)
    assert_close(ours, nchw_to_nhwc(ref))


def test_avg_pool2d_float16_large_window_finite():
    x = jnp.full((1, 16, 16, 2), 3e4, jnp.float16)
    out = F.avg_pool2d(x, kernel_size=15, stride=8, padding=7, count_include_pad=False)
    assert out.dtype == jnp.float16 and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("src,dst", [((1, 1), (7, 5)), ((2, 3), (7, 5)), ((4, 3), (7, 5)),
                                     ((3, 3), (9, 9)), ((4, 4), (6, 6)), ((5, 2), (7, 11))])
def test_interpolate_nearest_matches_torch(src, dst):
    x = RNG.normal(size=(2, *src, 3)).astype(np.float32)
    ref = tF.interpolate(nhwc_to_nchw(x), size=dst)
    np.testing.assert_array_equal(F.interpolate_nearest(x, dst), nchw_to_nhwc(ref))


# --- the mechanisms with explicit weights -----------------------------------------------------

def _eca_conv(k):
    # A 1D conv over channels written as a banded (C, C) matrix.
    def conv(y, w):
        c = y.shape[1]
        idx = jnp.arange(c)[:, None] - jnp.arange(c)[None, :] + k // 2  # tap of j for output i
        band = jnp.where((idx >= 0) & (idx < k), w[jnp.clip(-idx + k - 1, 0, k - 1)], 0.0)
        return jnp.einsum("ij,njk->nik", band, y)
    return conv


def test_eca_functional_matches_torch_conv1d():
    w = np.array([0.3, -1.2, 0.7], np.float32)
    ours = F.efficient_channel_attention(X, conv=lambda y: _eca_conv(3)(y, jnp.asarray(w)))
    ref = R.EfficientChannelAttention(6, 3)
    ref.conv.weight.data = torch.from_numpy(w).view(1, 1, 3)
    assert_close(ours, nchw_to_nhwc(ref(nhwc_to_nchw(X))))


def test_functional_check_grads(x64):
    x = _x64((2, 4, 3, 4))
    c, r = 4, 2
    w1, w2 = _w(c, r, seed=1), _w(r, c, seed=2)
    eca = lambda x, w: F.efficient_channel_attention(x, conv=lambda y: _eca_conv(3)(y, w))  # noqa: E731
    check_grads(eca, (x, _w(3, seed=3)), order=1, modes=["rev"])
    se_like = lambda x, a, b, **kw: F.gather_excite(  # noqa: E731
        x, reduce=lambda s: s @ a, expand=lambda s: s @ b, **kw)
    check_grads(lambda x, a, b: se_like(x, a, b), (x, w1, w2), order=1, modes=["rev"])
    check_grads(lambda x, a, b: se_like(x, a, b, extent=2), (x, w1, w2), order=1,
                modes=["rev"])
    check_grads(lambda x: F.gather_excite(x, extent=2), (x,), order=2, modes=["rev"])

    def ln(z):
        # A large epsilon keeps this 2-channel LayerNorm far from its near-sign-function regime,
        # where finite differences are inaccurate.
        mu = z.mean(-1, keepdims=True)
        return (z - mu) / jnp.sqrt(((z - mu) ** 2).mean(-1, keepdims=True) + 0.5)

    def gc(x, wa, a, b):
        t = (lambda s: s @ a, ln, lambda s: s @ b)
        return F.global_context(x, attn=lambda x: x @ wa, add_transform=t, scale_transform=t)

    check_grads(gc, (x, _w(c, 1, seed=4), w1, w2), order=1, modes=["rev"])
    soca = lambda x, a, b: F.second_order_channel(  # noqa: E731
        x, reduce=lambda s: s @ a, expand=lambda s: s @ b, iterations=3)
    check_grads(soca, (x, w1, w2), order=1, modes=["rev"])


def test_functional_jit_vmap():
    c = X.shape[-1]
    a, b = _w(c, 2, seed=1).astype(jnp.float32), _w(2, c, seed=2).astype(jnp.float32)
    fns = [
        lambda x: F.gather_excite(x, extent=4),
        lambda x: F.second_order_channel(x, reduce=lambda s: s @ a, expand=lambda s: s @ b),
        lambda x: F.global_context(x, attn=lambda x: x[..., :1],
                                   add_transform=(lambda s: s @ a, jnp.tanh, lambda s: s @ b)),
    ]
    for fn in fns:
        y = fn(X)
        np.testing.assert_allclose(jax.jit(fn)(X), y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(jax.vmap(lambda v, f=fn: f(v[None])[0])(X), y,
                                   rtol=1e-5, atol=1e-6)


def test_second_order_channel_constant_map_finite():
    x = jnp.full((1, 3, 3, 4), -2.5, jnp.float32)
    a, b = jnp.ones((4, 2)), jnp.ones((2, 4))
    f = lambda x: F.second_order_channel(x, reduce=lambda s: s @ a, expand=lambda s: s @ b)  # noqa: E731
    assert bool(jnp.all(jnp.isfinite(f(x))))
    assert bool(jnp.all(jnp.isfinite(jax.grad(lambda x: f(x).sum())(x))))


# --- bad input: one test per case -------------------------------------------------------------

def test_newton_schulz_non_square():
    with pytest.raises(ValueError, match=r"newton_schulz_sqrt: a must be square in its last two "
                                         r"axes \(\.\.\., C, C\), got shape \(2, 3, 4\)"):
        F.newton_schulz_sqrt(jnp.ones((2, 3, 4)))


def test_newton_schulz_bad_iterations():
    with pytest.raises(ValueError, match=r"newton_schulz_sqrt: iterations must be an integer "
                                         r">= 1, got 0"):
        F.newton_schulz_sqrt(jnp.eye(3), iterations=0)


def test_covariance_pool_bad_rank():
    with pytest.raises(ValueError,
                       match=r"covariance_pool: x must be at least rank 3 \(\.\.\., H, W, C\)"):
        F.covariance_pool(jnp.ones((4, 5)))


def test_avg_pool2d_bad_padding():
    with pytest.raises(ValueError, match=r"avg_pool2d: padding must be at most kernel_size // 2"):
        F.avg_pool2d(X, kernel_size=3, padding=2)


def test_interpolate_bad_size():
    with pytest.raises(ValueError, match=r"interpolate_nearest: size must be a pair \(H, W\)"):
        F.interpolate_nearest(X, (3,))


def test_gather_excite_bad_extent():
    with pytest.raises(ValueError, match=r"gather_excite: extent must be 0 \(global\) or a power "
                                         r"of two >= 2, got 6"):
        F.gather_excite(X, extent=6)


def test_gather_excite_reduce_without_expand():
    with pytest.raises(ValueError, match=r"gather_excite: reduce and expand must be both given"):
        F.gather_excite(X, reduce=lambda s: s)


def test_global_context_needs_a_transform():
    with pytest.raises(ValueError, match=r"global_context: add_transform / scale_transform must "
                                         r"be at least one given, got both None"):
        F.global_context(X, attn=lambda x: x[..., :1])


def test_eca_conv_wrong_shape():
    with pytest.raises(ValueError, match=r"efficient_channel_attention: conv must be a layer "
                                         r"returning shape \(2, 6, 1\)"):
        F.efficient_channel_attention(X, conv=lambda y: y[:, :3])


def test_functional_integer_dtype():
    with pytest.raises(ValueError, match=r"second_order_channel: x must be a floating-point"):
        F.second_order_channel(jnp.ones((1, 3, 3, 4), jnp.int32), reduce=None, expand=None)


# --- Found by tests/test_properties.py --------------------------------------------------------

def test_interpolate_nearest_sizes():
    x = jnp.ones((2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"interpolate_nearest: size must be a pair \(H, W\), "
                                         r"got 3"):
        F.interpolate_nearest(x, 3)  # was TypeError: object of type 'int' has no len()
    # An empty output is fine; an empty source cannot fill a non-empty one (was a raw
    # TypeError/IndexError from the gather).
    assert F.interpolate_nearest(x, (0, 2)).shape == (2, 0, 2, 5)
    assert F.interpolate_nearest(x[:, :0], (0, 2)).shape == (2, 0, 2, 5)
    with pytest.raises(ValueError, match=r"interpolate_nearest: x must be H, W >= 1 to resize "
                                         r"to \(2, 3\), got shape \(2, 0, 4, 5\)"):
        F.interpolate_nearest(x[:, :0], (2, 3))
