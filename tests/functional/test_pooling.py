import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from attention_jax import functional as F
from attention_jax.functional import pooling as pooling_mod
from tests.gradcheck import check_grads
from tests.parity import assert_close, nchw_to_nhwc, nhwc_to_nchw

X = np.random.default_rng(0).normal(size=(2, 5, 7, 6)).astype(np.float32)


def test_global_pools_match_torch():
    xt = nhwc_to_nchw(X)
    assert_close(F.global_avg_pool(X), tF.adaptive_avg_pool2d(xt, 1).flatten(1))
    assert_close(F.global_max_pool(X), tF.adaptive_max_pool2d(xt, 1).flatten(1))
    assert F.global_avg_pool(X, keepdims=True).shape == (2, 1, 1, 6)


def test_channel_pools_match_torch():
    xt = nhwc_to_nchw(X)
    assert_close(F.channel_avg_pool(X), nchw_to_nhwc(xt.mean(1, keepdim=True)))
    assert_close(F.channel_max_pool(X), nchw_to_nhwc(xt.amax(1, keepdim=True)))
    both = F.channel_avg_max_pool(X)
    assert both.shape == (2, 5, 7, 2)
    assert_close(both[..., 1], xt.amax(1).numpy())
    assert F.channel_avg_pool(X, keepdims=False).shape == (2, 5, 7)


@pytest.mark.parametrize("fn", [F.global_avg_pool, F.global_max_pool, F.channel_avg_pool,
                                F.channel_max_pool, F.channel_avg_max_pool])
def test_pools_grads_jit_vmap(fn, x64):
    x = jnp.asarray(X[:1, :3, :3, :3], jnp.float64) + jnp.arange(27.0).reshape(1, 3, 3, 3) * 0.1
    check_grads(fn, (x,), order=2, modes=["rev", "fwd"])
    np.testing.assert_allclose(jax.jit(fn)(X), fn(X), rtol=1e-6)
    batched = jax.vmap(lambda a: fn(a[None])[0])(X)
    np.testing.assert_allclose(batched, fn(X), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_mean_accumulates_in_float32(dtype):
    # 1e4 * 4096 pixels overflows a float16 accumulator (max 65504); float32 accumulation does not.
    x = jnp.full((1, 64, 64, 2), 1e4, dtype)
    out = F.global_avg_pool(x)
    assert out.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(np.asarray(out, np.float32), 1e4, rtol=1e-2)


@pytest.mark.parametrize("fn", [F.global_avg_pool, F.channel_avg_max_pool])
def test_rank_and_dtype_errors(fn):
    name = fn.__name__
    with pytest.raises(ValueError,
                       match=rf"{name}: x must be at least rank 3 \(\.\.\., H, W, C\), got shape"):
        fn(jnp.ones((4, 5)))
    with pytest.raises(ValueError, match=rf"{name}: x must be a floating-point array, got dtype"):
        fn(jnp.ones((1, 3, 4, 5), jnp.int32))


@pytest.mark.parametrize("hw,out", [((7, 7), (4, 4)), ((9, 5), (3, 2)), ((2, 3), (4, 5)),
                                    ((8, 8), 1), ((6, 10), (6, 10))])
def test_adaptive_avg_pool2d_matches_torch(hw, out):
    """PyTorch's bins (overlapping when sizes do not divide, repeated when the output is larger),
    forward and gradient."""
    x = np.random.default_rng(3).normal(size=(2, *hw, 3)).astype(np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
    yt = tF.adaptive_avg_pool2d(xt, out)
    cot = np.random.default_rng(4).normal(size=yt.shape).astype(np.float32)
    (yt * torch.from_numpy(cot)).sum().backward()
    y, vjp = jax.vjp(lambda a: F.adaptive_avg_pool2d(a, out), jnp.asarray(x))
    assert_close(y, yt.detach().permute(0, 2, 3, 1).numpy())
    (gx,) = vjp(jnp.asarray(cot.transpose(0, 2, 3, 1)))
    assert_close(gx, xt.grad.permute(0, 2, 3, 1).numpy())


def test_adaptive_avg_pool2d_grads_bf16_and_errors(x64):
    x = jnp.asarray(np.random.default_rng(5).normal(size=(1, 5, 7, 2)))
    check_grads(lambda a: F.adaptive_avg_pool2d(a, (3, 4)), (x,), order=2, modes=["fwd", "rev"])
    big = jnp.full((1, 9, 9, 2), 3e4, jnp.float16)  # a float16 sum of 9 of these overflows
    y = F.adaptive_avg_pool2d(big, 2)
    assert y.dtype == jnp.float16 and bool(jnp.all(jnp.isfinite(y)))
    with pytest.raises(ValueError, match="adaptive_avg_pool2d: output_size must be"):
        F.adaptive_avg_pool2d(x, (2, 0))
    with pytest.raises(ValueError, match="adaptive_avg_pool2d: output_size must be"):
        F.adaptive_avg_pool2d(x, (2, 2, 2))
    with pytest.raises(ValueError, match="adaptive_avg_pool2d: x must be at least rank 3"):
        F.adaptive_avg_pool2d(x[0, 0], 2)



# --- Empty windows (found by tests/test_properties.py) ----------------------------------------

@pytest.mark.parametrize("fn,shape,out", [
    (F.global_avg_pool, (2, 0, 3, 4), (2, 4)),
    (F.global_max_pool, (2, 3, 0, 4), (2, 4)),
    (F.channel_avg_pool, (2, 3, 3, 0), (2, 3, 3, 1)),
    (F.channel_max_pool, (2, 3, 3, 0), (2, 3, 3, 1)),
    (F.channel_avg_max_pool, (2, 3, 3, 0), (2, 3, 3, 2)),
    (F.avg_pool_h, (2, 3, 0, 4), (2, 3, 1, 4)),
    (F.avg_pool_w, (2, 0, 3, 4), (2, 1, 3, 4)),
    (F.covariance_pool, (2, 0, 3, 4), (2, 4, 4)),
])
def test_pool_over_nothing_is_zero(fn, shape, out):
    """A pool over no values is 0 (it was NaN for means, a raw ValueError for maxima), with a
    zero gradient; an empty map then goes through a mechanism to an empty output."""
    x = jnp.zeros(shape, jnp.bfloat16)
    y = fn(x)
    assert y.shape == out and bool(jnp.all(y == 0))
    g = jax.grad(lambda a: jnp.sum(fn(a)))(jnp.zeros(shape))
    assert g.shape == shape


def test_pool_bad_options_are_value_errors():
    x = jnp.ones((1, 4, 4, 2))
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d: output_size must be an int or a "
                                         r"pair \(Ho, Wo\), got 2.0"):
        F.adaptive_avg_pool2d(x, 2.0)  # was TypeError: 'float' object is not iterable
    a = jnp.eye(3)[None]
    with pytest.raises(ValueError, match=r"newton_schulz_sqrt: eps must be a positive finite "
                                         r"number, got inf"):
        F.newton_schulz_sqrt(a, eps=float("inf"))  # was a NaN output


def _cpu_hlo(fn, x):
    return jax.jit(fn).lower(x).compile().as_text()


@pytest.mark.parametrize("shape", [(1, 28, 28, 64), (3, 4, 5, 2), (3, 20, 20, 128)])
def test_global_avg_pool_both_forms_match_torch(shape):
    # (1, 28, 28, 64) and (3, 4, 5, 2) take the CPU's matmul form, (3, 20, 20, 128) is above
    # MATMUL_MEAN_MAX and keeps XLA's reduction; forward and input gradient against PyTorch.
    rng = np.random.default_rng(7)
    x = rng.normal(size=shape).astype(np.float32)
    cot = rng.normal(size=(shape[0], shape[-1])).astype(np.float32)
    xt = nhwc_to_nchw(x).requires_grad_()
    yt = tF.adaptive_avg_pool2d(xt, 1).flatten(1)
    yt.backward(torch.from_numpy(cot))
    y, pullback = jax.vjp(jax.jit(F.global_avg_pool), jnp.asarray(x))
    assert_close(y, yt.detach(), rtol=1e-6, atol_rel=1e-6)
    assert_close(pullback(jnp.asarray(cot))[0], nchw_to_nhwc(xt.grad), rtol=1e-6, atol_rel=1e-6)
    matmul = x.size <= F.pooling.MATMUL_MEAN_MAX
    assert ("dot(" in _cpu_hlo(F.global_avg_pool, x)) == matmul


def test_global_avg_pool_matmul_form_derivatives(x64):
    # The matmul form's reverse mode is the mean's broadcast (XLA rewrites the transposed
    # matmul, an outer product with ones); second order, jvp and vmap in float64.
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 3, 4, 5)))
    assert "dot(" in _cpu_hlo(F.global_avg_pool, x)
    grad = jax.grad(lambda a: jnp.sum(F.global_avg_pool(a) ** 2))
    assert _cpu_hlo(grad, x).count(" dot(") == 1  # the forward's only
    np.testing.assert_allclose(grad(x), np.broadcast_to(
        2 * np.mean(np.asarray(x), (1, 2), keepdims=True) / 12, x.shape), rtol=1e-12)
    check_grads(F.global_avg_pool, (x,), order=2, modes=["rev", "fwd"])
    np.testing.assert_allclose(jax.vmap(F.global_avg_pool)(x[None])[0],
                               np.mean(np.asarray(x), (1, 2)), rtol=1e-12)


@pytest.mark.parametrize("ceil_mode", [True, False])
@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (3, 8, 6, 2), (1, 3, 2, 4)])
def test_max_pool_2x2_gradient_is_torchs_with_ties(shape, ceil_mode):
    """The 2x2 max pool of the STN localisation net (``ceil_mode``) and of non-local's
    sub-sampling (floor) against ``torch.nn.functional.max_pool2d``, forward and input gradient,
    on small integers (many windows hold tied maxima: the gradient goes to each window's first
    maximum, as PyTorch's does), odd and even sizes."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=shape).astype(np.float32)
    out = [-(-s // 2) if ceil_mode else s // 2 for s in shape[1:3]]
    ct = rng.normal(size=(shape[0], *out, shape[3]))
    pool = jax.jit(lambda a: pooling_mod._max_pool_2x2(a, ceil_mode=ceil_mode))
    y, vjp = jax.vjp(pool, jnp.asarray(x))
    (gx,) = vjp(jnp.asarray(ct, jnp.float32))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
    yt = tF.max_pool2d(xt, 2, ceil_mode=ceil_mode)
    yt.backward(torch.from_numpy(ct).float().permute(0, 3, 1, 2))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(np.asarray(gx), xt.grad.permute(0, 2, 3, 1).numpy(), rtol=0,
                               atol=1e-7)


@pytest.mark.parametrize("ceil_mode", [True, False])
def test_max_pool_2x2_derivatives_match_reduce_windows(x64, ceil_mode):
    """The written-out JVP against ``lax.reduce_window``'s own derivatives, float64: forward
    mode, reverse, second order, under vmap; and the gradient needs no select-and-scatter."""
    def ref(a):
        pad = (0, a.shape[1] % 2), (0, a.shape[2] % 2)
        if not ceil_mode:
            a, pad = a[:, : a.shape[1] // 2 * 2, : a.shape[2] // 2 * 2], ((0, 0), (0, 0))
        return jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                     ((0, 0), *pad, (0, 0)))

    ours = lambda a: pooling_mod._max_pool_2x2(a, ceil_mode=ceil_mode)  # noqa: E731
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 7, 8, 3)))
    t = jnp.asarray(np.random.default_rng(5).normal(size=x.shape))
    np.testing.assert_array_equal(ours(x), ref(x))
    np.testing.assert_array_equal(jax.jvp(ours, (x,), (t,))[1], jax.jvp(ref, (x,), (t,))[1])
    loss = lambda f: (lambda a: jnp.sum(jnp.sin(f(a)) ** 2))  # noqa: E731
    np.testing.assert_allclose(jax.grad(loss(ours))(x), jax.grad(loss(ref))(x), rtol=1e-12)
    np.testing.assert_allclose(jax.jvp(jax.grad(loss(ours)), (x,), (t,))[1],
                               jax.jvp(jax.grad(loss(ref)), (x,), (t,))[1], rtol=1e-12,
                               atol=1e-12)
    xs = jnp.stack([x, -x])
    np.testing.assert_allclose(jax.vmap(jax.grad(loss(ours)))(xs),
                               jax.vmap(jax.grad(loss(ref)))(xs), rtol=1e-12)
    check_grads(ours, (x,), order=2, modes=["fwd", "rev"])
    text = jax.jit(jax.grad(loss(ours))).lower(x).as_text()
    assert "select_and_scatter" not in text


def test_max_pool_2x2_is_a_window_reduction_only_off_the_cpu():
    """On the CPU the pool is the max of four strided quarters (no ``reduce_window``, which
    XLA:CPU hands to YNNPACK); a GPU or TPU lowering keeps XLA's window reduction. Both equal
    ``reduce_window`` (the tests above run the CPU form; this one the other, on the CPU)."""
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 8, 6, 3)).astype(np.float32))
    f = jax.jit(lambda a: pooling_mod._max_pool_2x2(a, ceil_mode=False))
    assert "reduce_window" not in f.lower(x).as_text()
    for platform in ("cuda", "tpu"):
        text = jax.export.export(f, platforms=[platform])(x).mlir_module()
        assert "reduce_window" in text, platform
    want = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(pooling_mod._reduce_window_max(x), want)
    np.testing.assert_array_equal(f(x), want)
