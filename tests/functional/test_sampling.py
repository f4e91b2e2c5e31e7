"""affine_grid / grid_sample / perspective_grid / tps_grid against PyTorch, gradients, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from attention_jax import functional as F
from tests.gradcheck import check_grads
from tests.parity import assert_close

COMBOS = list(itertools.product(("bilinear", "nearest", "bicubic"),
                                ("zeros", "border", "reflection"), (False, True)))
# Bilinear has two implementations (the C++ XLA:CPU kernel, which "auto" picks on the CPU, and
# the pure-JAX one GPU/TPU run): every bilinear check runs on both.
CASES = [(m, p, a, i) for m, p, a in COMBOS
         for i in (("xla", "native") if m == "bilinear" else ("auto",))]
RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 5, 7, 3)).astype(np.float32)


def _grid(shape, lo=-1.6, hi=1.6, seed=1):
    g = np.random.default_rng(seed).uniform(lo, hi, size=shape).astype(np.float32)
    g.reshape(-1, 2)[:4] = [[30.0, 0.2], [-0.3, -25.0], [1e6, -1e6], [-2.5, 3.5]]  # far out
    return g


def _torch_sample(x, grid, cot, **kw):
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
    gt = torch.from_numpy(np.array(grid)).requires_grad_(True)
    y = tF.grid_sample(xt, gt, **kw)
    (y * torch.from_numpy(cot.transpose(0, 3, 1, 2))).sum().backward()
    return (y.detach().permute(0, 2, 3, 1).numpy(), xt.grad.permute(0, 2, 3, 1).numpy(),
            gt.grad.numpy())


def _jax_sample(x, grid, cot, **kw):
    def loss(a, g):
        return jnp.sum(F.grid_sample(a, g, **kw) * cot)

    y = F.grid_sample(jnp.asarray(x), jnp.asarray(grid), **kw)
    gx, gg = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(grid))
    return np.asarray(y), np.asarray(gx), np.asarray(gg)


@pytest.mark.parametrize("c", [3, 1, 32])
@pytest.mark.parametrize("mode,padding_mode,align_corners,impl", CASES)
def test_grid_sample_matches_torch_forward_and_grads(mode, padding_mode, align_corners, impl, c):
    x = X if c == 3 else RNG.normal(size=(2, 5, 7, c)).astype(np.float32)
    grid = _grid((2, 4, 6, 2))  # output size != input size, points far outside included
    cot = RNG.normal(size=(2, 4, 6, c)).astype(np.float32)
    kw = {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}
    y, gx, gg = _jax_sample(x, grid, cot, implementation=impl, **kw)
    yt, gxt, ggt = _torch_sample(x, grid, cot, **kw)
    assert_close(y, yt, what="forward")
    assert_close(gx, gxt, what="grad x")
    assert_close(gg, ggt, rtol=1e-4, what="grad grid")
    if mode == "nearest":
        assert not gg.any()


@pytest.mark.filterwarnings("ignore:Since version 1.3.0")
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("hw", [(1, 1), (9, 9), (28, 28), (7, 40)])
def test_affine_grid_matches_torch(align_corners, hw):
    theta = RNG.normal(size=(3, 2, 3)).astype(np.float32)
    theta[0] = np.eye(2, 3)
    g = np.asarray(F.affine_grid(jnp.asarray(theta), (3, *hw, 4), align_corners=align_corners))
    gt = tF.affine_grid(torch.from_numpy(theta), (3, 4, *hw), align_corners=align_corners).numpy()
    assert g.shape == (3, *hw, 2) and g.dtype == np.float32
    np.testing.assert_array_equal(g[0], gt[0])  # identity: bitwise PyTorch's grid
    np.testing.assert_allclose(g, gt, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_reproduces_input(mode, align_corners):
    theta = jnp.tile(jnp.eye(2, 3)[None], (2, 1, 1))
    grid = F.affine_grid(theta, X.shape, align_corners=align_corners)
    y = F.grid_sample(jnp.asarray(X), grid, mode=mode, align_corners=align_corners)
    np.testing.assert_allclose(np.asarray(y), X, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode,impl", [("bilinear", "xla"), ("bilinear", "native"),
                                       ("bicubic", "auto")])
def test_gradient_at_identity_nonzero_and_matches_torch(align_corners, mode, impl):
    """At the identity the sample points sit on integer pixel coordinates: the gradient w.r.t.
    the grid must still be non-zero (floor / floor + 1 neighbours), and equal to PyTorch's."""
    theta = np.tile(np.eye(2, 3, dtype=np.float32)[None], (2, 1, 1))
    grid = np.asarray(F.affine_grid(jnp.asarray(theta), X.shape, align_corners=align_corners))
    cot = RNG.normal(size=X.shape).astype(np.float32)
    kw = {"mode": mode, "padding_mode": "zeros", "align_corners": align_corners}
    _, gx, gg = _jax_sample(X, grid, cot, implementation=impl, **kw)
    _, gxt, ggt = _torch_sample(X, grid, cot, **kw)
    assert np.abs(gg).min(axis=-1).max() > 0.1 and np.mean(np.abs(gg) > 1e-3) > 0.9
    assert_close(gg, ggt, rtol=1e-4, what="grad grid")
    assert_close(gx, gxt, what="grad x")


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_nearest_ties_round_half_to_even(padding_mode, align_corners):
    w = 8
    u = np.array([0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, -0.5], np.float32)  # source coordinates
    gx = (2 * u / (w - 1) - 1) if align_corners else ((2 * u + 1) / w - 1)
    gx = gx.astype(np.float32)
    unnorm = (gx + 1) * ((w - 1) / 2) if align_corners else (gx + 1) * (w / 2) - 0.5
    grid = np.stack([gx, np.zeros_like(gx)], -1)[None, None].astype(np.float32)
    x = np.arange(w, dtype=np.float32).reshape(1, 1, w, 1)
    y = np.asarray(F.grid_sample(jnp.asarray(x), jnp.asarray(grid), mode="nearest",
                                 padding_mode=padding_mode, align_corners=align_corners))
    yt = tF.grid_sample(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(grid),
                        mode="nearest", padding_mode=padding_mode,
                        align_corners=align_corners).numpy()
    np.testing.assert_array_equal(y[0, 0, :, 0], yt[0, 0, 0])
    exact = unnorm.astype(np.float32) == u
    even = np.round(u)  # numpy rounds half to even
    assert exact.sum() >= 4
    np.testing.assert_array_equal(y[0, 0, exact & (u >= 0), 0], even[exact & (u >= 0)])


def _off_integer_grid(shape, size_hw, align_corners, seed):
    """Random grid whose source coordinates stay >= 0.15 px away from integers (no kinks)."""
    r = np.random.default_rng(seed)
    h, w = size_hw
    out = []
    for s in (w, h):
        u = r.integers(-2, s + 1, size=shape[:-1]) + r.uniform(0.15, 0.85, size=shape[:-1])
        out.append(2 * u / (s - 1) - 1 if align_corners else (2 * u + 1) / s - 1)
    return np.stack(out, -1)


@pytest.mark.parametrize("mode,impl", [("bilinear", "xla"), ("bilinear", "native"),
                                       ("bicubic", "auto")])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_check_grads(x64, mode, padding_mode, align_corners, impl):
    x = jnp.asarray(RNG.normal(size=(1, 4, 5, 2)))
    grid = jnp.asarray(_off_integer_grid((1, 3, 3, 2), (4, 5), align_corners, 3))
    assert x.dtype == jnp.float64 and grid.dtype == jnp.float64

    def f(a, g):
        return F.grid_sample(a, g, mode=mode, padding_mode=padding_mode,
                             align_corners=align_corners, implementation=impl)

    check_grads(f, (x, grid), order=1, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-6)


def test_jit_and_vmap():
    grid = jnp.asarray(_grid((2, 4, 6, 2)))
    x = jnp.asarray(X)
    f = jax.jit(lambda a, g: F.grid_sample(a, g, mode="bicubic", padding_mode="reflection"))
    y = F.grid_sample(x, grid, mode="bicubic", padding_mode="reflection")
    np.testing.assert_allclose(f(x, grid), y, rtol=1e-6, atol=1e-6)
    yv = jax.vmap(lambda a, g: F.grid_sample(a[None], g[None], mode="bicubic",
                                             padding_mode="reflection")[0])(x, grid)
    np.testing.assert_allclose(yv, y, rtol=1e-6, atol=1e-6)
    gv = jax.vmap(jax.grad(lambda a, g: F.grid_sample(a[None], g[None]).sum(), argnums=1))(x, grid)
    gb = jax.grad(lambda a, g: F.grid_sample(a, g).sum(), argnums=1)(x, grid)
    np.testing.assert_allclose(gv, gb, rtol=1e-6, atol=1e-6)
    th = jnp.asarray(RNG.normal(size=(2, 2, 3)), jnp.float32)
    np.testing.assert_allclose(jax.jit(lambda t: F.affine_grid(t, (2, 4, 6, 1)))(th),
                               F.affine_grid(th, (2, 4, 6, 1)), rtol=1e-6)


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode,impl", [("bilinear", "xla"), ("bilinear", "native"),
                                       ("nearest", "auto"), ("bicubic", "auto")])
def test_non_finite_grid_is_contained(mode, padding_mode, impl):
    grid = _grid((2, 4, 6, 2))
    bad = grid.copy()
    bad[0, 1, 2] = [np.nan, 0.1]
    bad[1, 3, 0] = [np.inf, -np.inf]
    bad[1, 0, 5] = [-0.2, np.nan]
    is_bad = ~np.isfinite(bad).all(-1)
    cot = RNG.normal(size=(2, 4, 6, 3)).astype(np.float32)
    cot[is_bad] = 0.0
    kw = {"mode": mode, "padding_mode": padding_mode, "align_corners": False,
          "implementation": impl}
    y, gx, gg = _jax_sample(X, bad, cot, **kw)
    y0, gx0, gg0 = _jax_sample(X, grid, cot, **kw)
    assert np.isfinite(y).all() and np.isfinite(gx).all() and np.isfinite(gg).all()
    np.testing.assert_array_equal(y[~is_bad], y0[~is_bad])
    np.testing.assert_allclose(gx, gx0, rtol=1e-6, atol=1e-6)  # no poisoning of d/dx
    np.testing.assert_array_equal(gg[~is_bad], gg0[~is_bad])
    assert not gg[is_bad].any()
    if padding_mode == "zeros":
        assert not y[is_bad].any()  # a non-finite point is outside the image


@pytest.mark.parametrize("impl", ["xla", "native"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_image_keeps_float32_grid(dtype, impl):
    w = 300  # pixel indices above 256 are not exact in bf16
    x = (jnp.arange(w, dtype=jnp.float32)[None, None, :, None] * 40.0).astype(dtype)
    theta = jnp.eye(2, 3, dtype=dtype)[None]
    grid = F.affine_grid(theta, (1, 1, w, 1))
    assert grid.dtype == jnp.float32
    y = F.grid_sample(x, grid, mode="bilinear", implementation=impl)
    assert y.dtype == dtype and bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x, np.float32))
    g = jax.grad(lambda a: F.grid_sample(a, grid, implementation=impl).astype(
        jnp.float32).sum())(x)
    assert g.dtype == dtype and bool(jnp.all(jnp.isfinite(g)))


def test_native_kernel_is_built_and_auto_uses_it_on_cpu():
    """The C++ kernel must build wherever the suite runs (CI has a compiler): a machine that
    silently fell back to the pure-JAX path would not be testing what users run."""
    from attention_jax import _native

    assert _native.available(), _native.status()
    grid = jnp.asarray(_grid((2, 4, 6, 2)))
    hlo = jax.jit(lambda a, g: F.grid_sample(a, g)).lower(jnp.asarray(X), grid).as_text()
    assert "attention_jax_grid_sample_bilinear_fwd_f32" in hlo
    hlo = jax.jit(lambda a, g: F.grid_sample(a, g, implementation="xla")).lower(
        jnp.asarray(X), grid).as_text()
    assert "attention_jax_grid_sample" not in hlo
    for mode in ("nearest", "bicubic"):  # no kernel for these: auto stays on the JAX path
        hlo = jax.jit(lambda a, g, m=mode: F.grid_sample(a, g, mode=m)).lower(
            jnp.asarray(X), grid).as_text()
        assert "attention_jax_grid_sample" not in hlo


def test_native_jit_vmap_and_batched_leading_dims():
    x = jnp.asarray(RNG.normal(size=(3, 2, 5, 7, 4)), jnp.float32)
    grid = jnp.asarray(np.stack([_grid((2, 4, 6, 2), seed=s) for s in range(3)]))
    f = lambda impl: jax.vmap(lambda a, g: F.grid_sample(a, g, implementation=impl))
    assert_close(f("native")(x, grid), f("xla")(x, grid))
    loss = lambda impl: lambda a, g: jnp.sum(jnp.sin(f(impl)(a, g)))
    gn = jax.jit(jax.grad(loss("native"), argnums=(0, 1)))(x, grid)
    gxla = jax.grad(loss("xla"), argnums=(0, 1))(x, grid)
    assert_close(gn[0], gxla[0], what="vmap grad x")
    assert_close(gn[1], gxla[1], rtol=1e-4, what="vmap grad grid")


@pytest.mark.parametrize("xs,gs", [((0, 4, 5, 1), (0, 2, 2, 2)),
                                   ((1, 4, 5, 1), (1, 0, 2, 2)), ((1, 1, 1, 1), (1, 3, 3, 2)),
                                   ((2, 1, 6, 2), (2, 3, 1, 2))])
def test_native_degenerate_sizes_match_xla(xs, gs):
    """Empty batches and grids, and one-pixel axes: same values and gradients on both paths.
    (Empty images and channel axes are rejected by the validation; the kernel also guards
    empty images.)"""
    x = jnp.asarray(RNG.normal(size=xs), jnp.float32)
    grid = jnp.asarray(np.random.default_rng(2).uniform(-1.5, 1.5, size=gs), jnp.float32)
    for pad in ("zeros", "border", "reflection"):
        for ac in (False, True):
            res = {}
            for impl in ("xla", "native"):
                f = lambda a, g, impl=impl, pad=pad, ac=ac: F.grid_sample(
                    a, g, padding_mode=pad, align_corners=ac, implementation=impl)
                y, vjp = jax.vjp(f, x, grid)
                res[impl] = (y, *vjp(jnp.ones_like(y)))
            for a, b in zip(res["native"], res["xla"], strict=True):
                assert a.shape == b.shape
                assert_close(a, b, what=f"{xs} {gs} {pad} {ac}")


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("hw,out", [((13, 29), (11, 17)), ((1, 9), (3, 5)), ((6, 1), (2, 7))])
def test_native_one_channel_fast_path_matches_torch(padding_mode, align_corners, hw, out):
    """One channel, float32: the kernel's zero-bordered AVX2 path (eight points at a time, the
    last 1-7 through a zero-filled copy). Point counts that are not multiples of eight, one-pixel
    axes, points far outside and non-finite, and non-finite pixels next to the border: a tap
    outside the image contributes nothing, as in PyTorch (not 0 * inf); non-finite points as
    on the pure-JAX path."""
    x = np.random.default_rng(5).normal(size=(3, *hw, 1)).astype(np.float32)
    x[0, 0, 0, 0], x[1, -1, -1, 0], x[2, hw[0] // 2, 0, 0] = np.inf, -np.inf, np.nan
    grid = _grid((3, *out, 2), lo=-1.4, hi=1.4, seed=7)
    grid[1, 0, :3] = [[np.nan, 0.2], [np.inf, 0.0], [0.5, -np.inf]]
    kw = {"padding_mode": padding_mode, "align_corners": align_corners}
    y = np.asarray(F.grid_sample(jnp.asarray(x), jnp.asarray(grid), implementation="native",
                                 **kw))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = tF.grid_sample(xt, torch.from_numpy(grid), **kw).permute(0, 2, 3, 1).numpy()
    ok = np.isfinite(grid).all(-1)  # PyTorch gives NaN there; ours: see the test above
    np.testing.assert_array_equal(np.isnan(y[ok]), np.isnan(yt[ok]))
    np.testing.assert_allclose(y[ok], yt[ok], rtol=1e-5, atol=1e-6)
    assert np.isfinite(y).sum() > y.size // 2
    xla = F.grid_sample(jnp.asarray(x), jnp.asarray(grid), implementation="xla", **kw)
    finite = np.isfinite(y)
    np.testing.assert_array_equal(finite, np.isfinite(np.asarray(xla)))
    # (the pure-JAX reflection arithmetic is itself ~1e-5 relative from PyTorch at some points)
    assert_close(y[finite], np.asarray(xla)[finite], what="native vs xla")


def test_native_disabled_by_environment():
    import os
    import subprocess
    import sys

    code = ("from attention_jax import _native; import jax.numpy as jnp; "
            "from attention_jax.functional import grid_sample; "
            "print(_native.available()); print(_native.status()); "
            "print(grid_sample(jnp.ones((1, 2, 2, 1)), jnp.zeros((1, 1, 1, 2))).sum())")
    env = {**os.environ, "ATTENTION_JAX_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.splitlines()
    assert out[0] == "False" and "ATTENTION_JAX_NATIVE=0" in out[1] and float(out[2]) == 1.0


def test_perspective_grid():
    n, size = 2, (2, 5, 6, 1)
    eye = jnp.tile(jnp.eye(3)[None], (n, 1, 1))
    ident = F.affine_grid(eye[:, :2], size)
    np.testing.assert_array_equal(F.perspective_grid(eye, size), ident)
    m = np.tile(np.eye(3, dtype=np.float32)[None], (n, 1, 1))
    m[:, :2] = RNG.normal(size=(n, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(F.perspective_grid(jnp.asarray(m), size),
                               F.affine_grid(jnp.asarray(m[:, :2]), size), rtol=1e-6, atol=1e-6)
    m[:, 2, :2] = [0.3, -0.2]
    g = np.asarray(F.perspective_grid(jnp.asarray(m), size, align_corners=True))
    b = np.asarray(F.affine_grid(eye[:, :2], size, align_corners=True))
    h = np.einsum("nij,hwj->nhwi", m, np.concatenate([b[0], np.ones((5, 6, 1))], -1))
    np.testing.assert_allclose(g, h[..., :2] / h[..., 2:], rtol=1e-5, atol=1e-6)
    sing = jnp.zeros((1, 3, 3))
    out = F.perspective_grid(sing, (1, 3, 3, 1))
    gr = jax.grad(lambda a: F.perspective_grid(a, (1, 3, 3, 1)).sum())(sing)
    assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(jnp.isfinite(gr)))


def test_tps_grid():
    base = F.tps_base_points((3, 3))
    size = (2, 5, 5, 1)
    cp = jnp.tile(jnp.asarray(base)[None], (2, 1, 1))
    for ac in (False, True):
        np.testing.assert_allclose(F.tps_grid(cp, size, base_points=base, align_corners=ac),
                                   F.affine_grid(jnp.tile(jnp.eye(2, 3)[None], (2, 1, 1)), size,
                                                 align_corners=ac), atol=1e-5)
    a = RNG.normal(size=(2, 2, 3)).astype(np.float32) * 0.3 + np.eye(2, 3)
    cpa = np.einsum("nij,kj->nki", a, np.concatenate([base, np.ones((9, 1))], 1))
    np.testing.assert_allclose(F.tps_grid(jnp.asarray(cpa, jnp.float32), size, base_points=base),
                               F.affine_grid(jnp.asarray(a), size), atol=1e-5)  # affine exact
    cpr = cp + 0.1 * jnp.asarray(RNG.normal(size=cp.shape), jnp.float32)
    g = F.tps_grid(cpr, size, base_points=base, align_corners=True)
    # align_corners=True on 5x5 puts pixels on -1, -0.5, 0, 0.5, 1: the base points interpolate.
    np.testing.assert_allclose(g[:, ::2, ::2].reshape(2, 9, 2), cpr, atol=1e-5)


def test_bad_input():
    x = jnp.ones((2, 4, 4, 1))
    grid = jnp.zeros((2, 3, 3, 2))
    with pytest.raises(ValueError, match=r"affine_grid: theta must be shape \(\.\.\., 2, 3\)"):
        F.affine_grid(jnp.zeros((2, 3, 3)), (2, 4, 4, 1))
    with pytest.raises(ValueError, match=r"affine_grid: theta must be shape \(\.\.\., 2, 3\)"):
        F.affine_grid(jnp.zeros((2, 6)), (2, 4, 4, 1))
    with pytest.raises(ValueError, match=r"affine_grid: theta must be at least rank 2"):
        F.affine_grid(jnp.zeros((6,)), (4, 4, 1))
    with pytest.raises(ValueError, match=r"affine_grid: size must be batch 2"):
        F.affine_grid(jnp.zeros((2, 2, 3)), (3, 4, 4, 1))
    with pytest.raises(ValueError, match=r"affine_grid: size must be a 4-tuple"):
        F.affine_grid(jnp.zeros((2, 2, 3)), (4, 4))
    with pytest.raises(ValueError, match=r"grid_sample: grid must be shape \(\.\.\., Ho, Wo, 2\), "
                                         r"got shape \(2, 3, 3, 3\)"):
        F.grid_sample(x, jnp.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"grid_sample: grid must be the leading \(batch\) dims "
                                         r"\(2,\) of x, got shape \(1, 3, 3, 2\)"):
        F.grid_sample(x, jnp.zeros((1, 3, 3, 2)))
    with pytest.raises(ValueError, match=r"grid_sample: mode must be one of 'bilinear', "
                                         r"'nearest', 'bicubic', got 'linear'"):
        F.grid_sample(x, grid, mode="linear")
    with pytest.raises(ValueError, match=r"grid_sample: padding_mode must be one of 'zeros', "
                                         r"'border', 'reflection', got 'edge'"):
        F.grid_sample(x, grid, padding_mode="edge")
    with pytest.raises(ValueError, match=r"grid_sample: x must be a floating-point array"):
        F.grid_sample(jnp.ones((2, 4, 4, 1), jnp.int32), grid)
    with pytest.raises(ValueError, match=r"grid_sample: x must be at least rank 3 "
                                         r"\(\.\.\., H, W, C\)"):
        F.grid_sample(jnp.ones((4, 1)), grid)
    with pytest.raises(ValueError, match=r"grid_sample: grid must be at least rank 3 "
                                         r"\(\.\.\., Ho, Wo, 2\)"):
        F.grid_sample(x, jnp.zeros((9, 2)))
    with pytest.raises(ValueError, match=r"grid_sample: grid must be a floating-point array"):
        F.grid_sample(x, jnp.zeros((2, 3, 3, 2), jnp.int32))
    for shape in ((2, 0, 4, 1), (2, 4, 0, 1), (2, 4, 4, 0)):
        with pytest.raises(ValueError, match=r"grid_sample: x must be an image with H, W, C >= 1"):
            F.grid_sample(jnp.ones(shape), grid)
    with pytest.raises(ValueError, match=r"grid_sample.*implementation.*native.*bilinear"):
        F.grid_sample(x, grid, mode="nearest", implementation="native")
    with pytest.raises(ValueError, match=r"grid_sample.*implementation.*'auto'.*'pallas'"):
        F.grid_sample(x, grid, implementation="pallas")
    with pytest.raises(ValueError, match=r"perspective_grid: matrix must be shape \(\.\.\., 3, 3"):
        F.perspective_grid(jnp.zeros((2, 2, 3)), (2, 4, 4, 1))
    base = F.tps_base_points((2, 2))
    with pytest.raises(ValueError, match=r"tps_grid: control_points must be shape \(\.\.\., 4, 2"):
        F.tps_grid(jnp.zeros((2, 5, 2)), (2, 4, 4, 1), base_points=base)
    with pytest.raises(ValueError, match=r"tps_grid: base_points must be finite, got "
                                         r"non-finite values"):
        F.tps_grid(jnp.zeros((1, 3, 2)), (1, 4, 4, 1),
                   base_points=[[0, 0], [1, np.nan], [0, 1]])
    for eps in (0.0, -1e-6, float("inf"), float("nan"), True, "1e-6"):
        with pytest.raises(ValueError, match=r"perspective_grid: eps must be a positive finite "
                                             r"number"):
            F.perspective_grid(jnp.zeros((2, 3, 3)), (2, 4, 4, 1), eps=eps)
    with pytest.raises(ValueError, match=r"tps_grid: base_points must be not all on one line"):
        F.tps_grid(jnp.zeros((1, 3, 2)), (1, 4, 4, 1), base_points=[[0, 0], [1, 1], [2, 2]])
    with pytest.raises(ValueError, match=r"tps_base_points: grid_size must be an integer >= 2"):
        F.tps_base_points((1, 3))


@pytest.mark.parametrize("eps", [0, -1e-6, float("nan"), float("inf")])
def test_perspective_grid_eps_must_be_positive_finite(eps):
    """eps = 0 let a zero denominator through (a NaN grid); now a ValueError."""
    with pytest.raises(ValueError, match=r"perspective_grid: eps must be a positive finite "
                                         r"number"):
        F.perspective_grid(jnp.zeros((1, 3, 3)), (1, 2, 2, 3), eps=eps)
