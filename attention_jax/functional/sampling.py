"""Differentiable image sampling: ``affine_grid``, ``grid_sample`` and the STN's other grids (NHWC).

Semantics follow PyTorch's ``torch.nn.functional.affine_grid`` / ``grid_sample`` exactly (its CPU
kernel's arithmetic, padding rules, nearest rounding half-to-even and bicubic A = -0.75), with NHWC
images and (x, y) grids in [-1, 1]. Gradients come from a ``jax.custom_vjp`` that mirrors
PyTorch's backward: the lower neighbour is ``floor`` and the upper ``floor + 1``, so the gradient
w.r.t. the grid is non-zero at integer coordinates (where an identity-initialised spatial
transformer starts), and a clipped or reflected coordinate's gradient is masked as PyTorch masks it.

Sampling grids are computed in (at least) float32 whatever the image dtype: bf16 has 8
significant bits, so pixel indices above 256 would not be exact.

Non-finite grid values never crash and never poison other samples: with ``padding_mode="zeros"``
a nan/inf coordinate samples zero (PyTorch returns nan there), with ``"border"`` nan goes to the
first pixel and +-inf to the border, with ``"reflection"`` nan/inf go to the first pixel (as
PyTorch's forward does); their gradient w.r.t. the grid is zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import _native
from attention_jax._validation import (
    check_choice,
    check_floating,
    check_min_rank,
    check_number,
    check_positive_int,
    fail,
    shape_of,
)
from attention_jax.functional._batch import NHWC, batch_dims, flatten_leading, restore_leading

__all__ = [
    "affine_grid",
    "grid_sample",
    "perspective_grid",
    "tps_grid",
    "tps_base_points",
]

MODES = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("zeros", "border", "reflection")
_CUBIC_A = -0.75


# ----------------------------------------------------------------------------------------------
# Grids
# ----------------------------------------------------------------------------------------------


def _torch_linspace_from_neg_one(steps: int, align_corners: bool) -> np.ndarray:
    """The normalised pixel centres exactly as PyTorch's ``affine_grid`` computes them (float32).

    Bitwise agreement matters: at the identity transform the sample points sit on integer pixel
    coordinates, and one ulp decides which neighbour pair a gradient w.r.t. the grid uses.
    """
    if steps <= 1:
        return np.zeros((max(steps, 1),), np.float32)
    step = np.float64(np.float32(2.0) / np.float32(steps - 1))
    idx = np.arange(steps)
    # PyTorch's linspace evaluates start + step * i (first half) and end - step * (n - 1 - i)
    # (second half) as fused multiply-adds: exact product in float64, one rounding to float32.
    lo = (-1.0 + step * idx).astype(np.float32)
    hi = (1.0 - step * (steps - 1 - idx)).astype(np.float32)
    r = np.where(idx < steps // 2, lo, hi).astype(np.float32)
    if not align_corners:
        r = ((r * np.float32(steps - 1)).astype(np.float32) / np.float32(steps)).astype(np.float32)
    return r


def _base_xy(h: int, w: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
    xs = _torch_linspace_from_neg_one(w, align_corners)
    ys = _torch_linspace_from_neg_one(h, align_corners)
    return np.broadcast_to(xs[None, :], (h, w)), np.broadcast_to(ys[:, None], (h, w))


def _grid_dtype(a: jax.Array) -> jnp.dtype:
    """Grids are at least float32 (float64 stays float64)."""
    return jnp.promote_types(a.dtype, jnp.float32)


def _check_size(fn: str, size: Sequence[int], lead: tuple[int, ...], arg: str) -> tuple[int, int]:
    """``size`` is (*lead, H, W, C): the transform's leading (batch) dims, then the output's."""
    k = len(lead) + 3
    if not isinstance(size, (tuple, list)) or len(size) != k:
        what = "(N, H, W, C)" if len(lead) == 1 else f"(*{arg}'s leading dims {lead}, H, W, C)"
        raise fail(fn, "size", f"a {k}-tuple {what}", repr(size))
    for v in size[:-3]:
        check_positive_int(fn, "size", v, minimum=0)  # an empty batch is fine
    for v in size[-3:]:
        check_positive_int(fn, "size", v)
    if tuple(size[:-3]) != lead:
        what = (f"batch {lead[0]} (first entry" if len(lead) == 1
                else f"leading dims {lead} (the first entries")
        raise fail(fn, "size", f"{what}, matching the transform)", repr(size))
    return int(size[-3]), int(size[-2])


def _check_transform(fn: str, arg: str, a: jax.Array, core: tuple[int | None, ...],
                     layout: str) -> tuple[int, ...]:
    """A floating (..., *core) array (None: any size); returns its leading dims."""
    check_min_rank(fn, arg, a, len(core), layout)
    check_floating(fn, arg, a)
    tail = a.shape[a.ndim - len(core):]
    if any(c is not None and t != c for t, c in zip(tail, core, strict=True)):
        raise fail(fn, arg, f"shape {layout}", f"shape {shape_of(a)}")
    return tuple(a.shape[: a.ndim - len(core)])


def affine_grid(theta: jax.Array, size: Sequence[int], *, align_corners: bool = False) -> jax.Array:
    """Sampling grid of an affine transform, identical to ``torch.nn.functional.affine_grid``.

    Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015 (eq. 1).

    Args:
      theta: (N, 2, 3) affine matrices mapping output (x, y, 1) to input (x, y); N stands for
        any number of leading batch dims (none included).
      size: output size (N, H, W, C) (NHWC, where PyTorch takes NCHW), with theta's leading
        dims first.
      align_corners: as in PyTorch: -1 and 1 are the centres (True) or the outer edges (False)
        of the corner pixels.

    Returns:
      (N, H, W, 2) grid of normalised (x, y) coordinates, float32 (float64 for float64 theta).
    """
    fn = "affine_grid"
    lead = _check_transform(fn, "theta", theta, (2, 3), "(..., 2, 3)")
    h, w = _check_size(fn, size, lead, "theta")
    return restore_leading(_affine_grid(flatten_leading(theta, 2), h, w, align_corners), lead)


def _affine_grid(theta: jax.Array, h: int, w: int, align_corners: bool) -> jax.Array:
    theta = theta.astype(_grid_dtype(theta))
    bx, by = (jnp.asarray(a, theta.dtype) for a in _base_xy(h, w, align_corners))
    t = theta[:, :, :, None, None]
    # Elementwise (x * t0 + y * t1) + t2: the order of PyTorch's per-row dot product, and exact
    # at the identity (so the identity grid is bitwise PyTorch's).
    gx = bx * t[:, 0, 0] + by * t[:, 0, 1] + t[:, 0, 2]
    gy = bx * t[:, 1, 0] + by * t[:, 1, 1] + t[:, 1, 2]
    return jnp.stack([gx, gy], axis=-1)


def perspective_grid(
    matrix: jax.Array, size: Sequence[int], *, align_corners: bool = False, eps: float = 1e-6
) -> jax.Array:
    """Sampling grid of a projective transform (3x3 homography) in normalised coordinates.

    Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015 (sec. 3.2, projective
    transformations). Output point (x, y, 1) maps to input ``(u / w, v / w)`` with
    ``(u, v, w) = matrix @ (x, y, 1)``; ``|w|`` is kept at least ``eps`` so points at infinity
    give large finite coordinates and finite gradients.

    Args:
      matrix: (N, 3, 3) homographies (the identity is ``eye(3)``); N: any leading batch dims.
      size: output size (N, H, W, C), with matrix's leading dims first.
      align_corners: as in ``affine_grid``.
      eps: smallest magnitude of the homogeneous denominator (a positive finite number).

    Returns:
      (N, H, W, 2) grid of normalised (x, y), float32 (float64 for float64 input).
    """
    fn = "perspective_grid"
    lead = _check_transform(fn, "matrix", matrix, (3, 3), "(..., 3, 3)")
    h, w = _check_size(fn, size, lead, "matrix")
    eps = check_number(fn, "eps", eps, positive=True)
    grid = _perspective_grid(flatten_leading(matrix, 2), h, w, align_corners, float(eps))
    return restore_leading(grid, lead)


def _perspective_grid(matrix: jax.Array, h: int, w: int, align_corners: bool,
                      eps: float) -> jax.Array:
    m = matrix.astype(_grid_dtype(matrix))
    bx, by = (jnp.asarray(a, m.dtype) for a in _base_xy(h, w, align_corners))
    t = m[:, :, :, None, None]
    u = bx * t[:, 0, 0] + by * t[:, 0, 1] + t[:, 0, 2]
    v = bx * t[:, 1, 0] + by * t[:, 1, 1] + t[:, 1, 2]
    d = bx * t[:, 2, 0] + by * t[:, 2, 1] + t[:, 2, 2]
    d = jnp.where(jnp.abs(d) < eps, jnp.where(d < 0, -eps, eps), d)
    return jnp.stack([u / d, v / d], axis=-1)


def tps_base_points(grid_size: Sequence[int]) -> np.ndarray:
    """The fixed control points of a thin-plate spline: a regular (gh, gw) lattice on [-1, 1]^2.

    Args:
      grid_size: (gh, gw), each >= 2.

    Returns:
      float32 array of shape (gh * gw, 2): (x, y), row-major (y slowest).
    """
    if not isinstance(grid_size, (tuple, list)) or len(grid_size) != 2:
        raise fail("tps_base_points", "grid_size", "a pair (gh, gw)", repr(grid_size))
    for v in grid_size:
        check_positive_int("tps_base_points", "grid_size", v, minimum=2)
    gh, gw = grid_size
    ys, xs = np.meshgrid(np.linspace(-1.0, 1.0, gh), np.linspace(-1.0, 1.0, gw), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    """U(r) = r^2 log r^2 (0 at r = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r2 > 0, r2 * np.log(np.where(r2 > 0, r2, 1.0)), 0.0)


def _tps_matrix(base: np.ndarray, h: int, w: int, align_corners: bool) -> np.ndarray:
    """(H * W, K) matrix M with grid = M @ control_points (float64 solve, float32 result)."""
    c = base.astype(np.float64)
    k = c.shape[0]
    big_l = np.zeros((k + 3, k + 3))
    big_l[:k, :k] = _tps_kernel(((c[:, None] - c[None]) ** 2).sum(-1))
    p = np.concatenate([np.ones((k, 1)), c], axis=1)
    big_l[:k, k:] = p
    big_l[k:, :k] = p.T
    inv = np.linalg.inv(big_l)[:, :k]  # coefficients (weights; affine) = inv @ targets
    bx, by = _base_xy(h, w, align_corners)
    q = np.stack([bx.ravel(), by.ravel()], -1).astype(np.float64)
    phi = _tps_kernel(((q[:, None] - c[None]) ** 2).sum(-1))
    qa = np.concatenate([phi, np.ones((q.shape[0], 1)), q], axis=1)
    return (qa @ inv).astype(np.float32)


def tps_grid(
    control_points: jax.Array,
    size: Sequence[int],
    *,
    base_points: np.ndarray | Sequence[Sequence[float]],
    align_corners: bool = False,
) -> jax.Array:
    """Sampling grid of a thin-plate spline taking ``base_points`` (output) to ``control_points``.

    Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015 (sec. 3.2, thin plate
    spline transformations); Bookstein, PAMI 1989. The spline (kernel ``r^2 log r^2`` plus an
    affine part) is solved once for the fixed ``base_points`` (in float64, at trace time), so the
    grid is one (H * W, K) matrix times ``control_points``: linear in them, cheap to differentiate.
    ``control_points == base_points`` gives the identity grid.

    Args:
      control_points: (N, K, 2) normalised (x, y) input positions of the K base points; N:
        any leading batch dims (none included).
      size: output size (N, H, W, C), with control_points' leading dims first.
      base_points: concrete (K, 2) array of distinct output positions (x, y), e.g.
        ``tps_base_points((4, 4))``; K >= 3, not all on one line.
      align_corners: as in ``affine_grid``.

    Returns:
      (N, H, W, 2) grid of normalised (x, y), float32 (float64 for float64 input).
    """
    fn = "tps_grid"
    lead = _check_transform(fn, "control_points", control_points, (None, 2), "(..., K, 2)")
    try:
        base = np.asarray(base_points, np.float64)
    except Exception as e:  # a tracer: the spline is solved at trace time
        raise fail(fn, "base_points", "a concrete (K, 2) array", type(base_points).__name__) from e
    if base.ndim != 2 or base.shape[1] != 2 or base.shape[0] < 3:
        raise fail(fn, "base_points", "shape (K, 2) with K >= 3", f"shape {base.shape}")
    k = base.shape[0]
    if control_points.shape[-2] != k:
        raise fail(fn, "control_points", f"shape (..., {k}, 2) (K from base_points)",
                   f"shape {shape_of(control_points)}")
    h, w = _check_size(fn, size, lead, "control_points")
    if not np.all(np.isfinite(base)):
        raise fail(fn, "base_points", "finite", "non-finite values")
    if np.linalg.matrix_rank(np.concatenate([np.ones((k, 1)), base], 1)) < 3:
        raise fail(fn, "base_points", "not all on one line", "collinear points")
    cp = flatten_leading(control_points, 2).astype(_grid_dtype(control_points))
    m = jnp.asarray(_tps_matrix(base, h, w, align_corners), cp.dtype)
    g = jnp.einsum("pk,nkd->npd", m, cp, precision=jax.lax.Precision.HIGHEST)
    return restore_leading(g.reshape(cp.shape[0], h, w, 2), lead)


# ----------------------------------------------------------------------------------------------
# grid_sample: coordinate maps (PyTorch's ComputeLocation), written once for both passes
# ----------------------------------------------------------------------------------------------


def _unnormalize(g: jax.Array, size: int, align_corners: bool) -> tuple[jax.Array, float]:
    if align_corners:
        scale = (size - 1) / 2
        return (g + 1) * scale, scale
    scale = size / 2
    return (g + 1) * scale - 0.5, scale


def _clip(u: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """Clip to [0, size - 1]; gradient multiplier 0 at and beyond the borders (as PyTorch)."""
    res = jnp.clip(u, 0, size - 1)
    return res, (res != 0) & (res != size - 1)


def _reflect(u: jax.Array, size: int, align_corners: bool) -> tuple[jax.Array, jax.Array]:
    """Reflect into the image span; returns (coordinate, sign of its derivative)."""
    if align_corners:
        if size <= 1:
            return jnp.zeros_like(u), jnp.zeros_like(u)
        low, twice_span = 0.0, 2.0 * (size - 1)
    else:
        low, twice_span = -0.5, 2.0 * size
    v = u - low
    a = jnp.abs(v)
    extra = a - jnp.trunc(a / twice_span) * twice_span
    flipped = twice_span - extra
    one_more = extra > flipped
    res = jnp.where(one_more, flipped, extra) + low
    sign = jnp.where(one_more ^ (v < 0), -1.0, 1.0).astype(u.dtype)
    return res, sign


def _source_coords(g, size, mode, padding, align_corners):
    """Grid values (one axis) -> source coordinate and d(coordinate)/d(grid)."""
    u, scale = _unnormalize(g, size, align_corners)
    finite = jnp.isfinite(u)
    if padding == "zeros":
        fill = jnp.asarray(-10.0, u.dtype)  # far outside: every tap masked, output 0
    elif padding == "border":
        fill = jnp.where(u > 0, size - 1, 0).astype(u.dtype)  # +inf -> last, -inf/nan -> first
    else:
        fill = jnp.asarray(0.0, u.dtype)
    u = jnp.where(finite, u, fill)
    mult = jnp.where(finite, scale, 0.0).astype(u.dtype)
    if mode == "bicubic" or padding == "zeros":
        return u, mult
    if padding == "reflection":
        u, sign = _reflect(u, size, align_corners)
        mult = mult * sign
    u, inside = _clip(u, size)
    return u, jnp.where(inside, mult, 0.0)


def _pad_index(t: jax.Array, size: int, padding: str, align_corners: bool):
    """Integer-valued tap coordinate -> (in-bounds mask, clamped index) under a padding mode."""
    if padding == "reflection":
        t = jnp.clip(_reflect(t, size, align_corners)[0], 0, size - 1)
    elif padding == "border":
        t = jnp.clip(t, 0, size - 1)
    mask = (t >= 0) & (t <= size - 1)
    return mask, jnp.where(mask, t, 0).astype(jnp.int32)


def _cubic(t):
    """PyTorch's cubic convolution coefficients (A = -0.75) and their derivatives w.r.t. t."""
    a = _CUBIC_A

    def f1(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def f2(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    def d1(x):
        return (3 * (a + 2) * x - 2 * (a + 3)) * x

    def d2(x):
        return (3 * a * x - 10 * a) * x + 8 * a

    coeffs = [f2(t + 1), f1(t), f1(1 - t), f2(2 - t)]
    grads = [d2(t + 1), d1(t), -d1(1 - t), -d2(2 - t)]
    return coeffs, grads


def _taps(x_shape, grid, mode, padding, align_corners):
    """Flat gather indices, weights and weight derivatives of every tap.

    Returns idx (N, Ho, Wo, K) int32 into the (N * H * W) flattened image, mask (same) for
    zero padding, weights w, dw/dgx and dw/dgy (N, Ho, Wo, K) in the grid's dtype. K is 4
    (bilinear), 1 (nearest) or 16 (bicubic).
    """
    n, h, w, _ = x_shape
    ux, mx = _source_coords(grid[..., 0], w, mode, padding, align_corners)
    uy, my = _source_coords(grid[..., 1], h, mode, padding, align_corners)
    base = (jnp.arange(n, dtype=jnp.int32) * (h * w))[:, None, None]
    if mode == "nearest":
        rx, ry = jnp.round(ux), jnp.round(uy)  # half to even, as PyTorch's nearbyint
        okx, okx_i = _pad_index(rx, w, "zeros", align_corners)
        oky, oky_i = _pad_index(ry, h, "zeros", align_corners)
        m = okx & oky
        idx = jnp.where(m, base + oky_i * w + okx_i, 0)[..., None]
        one = jnp.ones_like(ux)[..., None]
        return idx, m[..., None], one, None, None
    x0, y0 = jnp.floor(ux), jnp.floor(uy)
    tx, ty = ux - x0, uy - y0
    if mode == "bilinear":
        offsets = (0, 1)
        cx, cy = [1 - tx, tx], [1 - ty, ty]
        one = jnp.ones_like(tx)
        dcx, dcy = [-one, one], [-one, one]
        pad = "zeros"  # coordinates are already padded; taps only need the bounds mask
    else:
        offsets = (-1, 0, 1, 2)
        (cx, dcx), (cy, dcy) = _cubic(tx), _cubic(ty)
        pad = padding
    cols = [_pad_index(x0 + o, w, pad, align_corners) for o in offsets]
    rows = [_pad_index(y0 + o, h, pad, align_corners) for o in offsets]
    idx, mask, wts, dwx, dwy = [], [], [], [], []
    for j, (my_ok, iy) in enumerate(rows):
        for i, (mx_ok, ix) in enumerate(cols):
            m = mx_ok & my_ok
            mask.append(m)
            idx.append(jnp.where(m, base + iy * w + ix, 0))
            wts.append(cy[j] * cx[i])
            dwx.append(cy[j] * dcx[i] * mx)
            dwy.append(dcy[j] * cx[i] * my)
    st = partial(jnp.stack, axis=-1)
    return st(idx), st(mask), st(wts), st(dwx), st(dwy)


def _gather(xf, idx, mask):
    """(M, C) rows at idx (..., K) -> (..., K, C), zero where masked."""
    v = xf[idx]
    return jnp.where(mask[..., None], v, jnp.zeros((), xf.dtype))


def _tap_sum(a: jax.Array) -> jax.Array:
    """Sum over the tap axis (-2 of (..., K, C)) as K explicit adds.

    XLA:CPU fuses a ``reduce`` over the tap axis with the gather feeding it into a loop that
    is ~20x slower than the gather alone; K unrolled adds keep the gather a plain gather.
    """
    out = a[..., 0, :]
    for k in range(1, a.shape[-2]):
        out = out + a[..., k, :]
    return out


def _forward(x, grid, mode, padding, align_corners):
    n, h, w, c = x.shape
    idx, mask, wts, _, _ = _taps(x.shape, grid, mode, padding, align_corners)
    ct = jnp.promote_types(x.dtype, grid.dtype)
    v = _gather(x.reshape(n * h * w, c), idx, mask).astype(ct)
    return _tap_sum(wts.astype(ct)[..., None] * v).astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _grid_sample(x, grid, mode, padding, align_corners):
    return _forward(x, grid, mode, padding, align_corners)


def _grid_sample_fwd(x, grid, mode, padding, align_corners):
    return _forward(x, grid, mode, padding, align_corners), (x, grid)


def _grid_sample_bwd(mode, padding, align_corners, res, g):
    x, grid = res
    n, h, w, c = x.shape
    idx, mask, wts, dwx, dwy = _taps(x.shape, grid, mode, padding, align_corners)
    ct = jnp.promote_types(x.dtype, grid.dtype)
    g = g.astype(ct)
    # d loss / d x: one scatter-add of every tap's contribution over the flattened image.
    upd = jnp.where(mask[..., None], wts.astype(ct)[..., None] * g[..., None, :], 0)
    gx = jax.ops.segment_sum(upd.reshape(-1, c), idx.reshape(-1), num_segments=n * h * w)
    gx = gx.reshape(x.shape).astype(x.dtype)
    if mode == "nearest":
        return gx, jnp.zeros_like(grid)
    # d loss / d grid: sum over taps of (d weight / d grid) * <g, tap value>.
    v = _gather(x.reshape(n * h * w, c), idx, mask).astype(ct)
    d = jnp.sum(v * g[..., None, :], axis=-1)
    ggx = _tap_sum((d * dwx.astype(ct))[..., None])[..., 0]
    ggy = _tap_sum((d * dwy.astype(ct))[..., None])[..., 0]
    return gx, jnp.stack([ggx, ggy], axis=-1).astype(grid.dtype)


_grid_sample.defvjp(_grid_sample_fwd, _grid_sample_bwd)


# Native XLA:CPU kernel (bilinear): attention_jax/_native/grid_sample.cc through the XLA FFI.

_PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}


def _native_fwd_results(x, grid):
    return (jax.ShapeDtypeStruct(x.shape[:1] + grid.shape[1:3] + x.shape[-1:], x.dtype),)


def _native_bwd_results(x, grid, g):
    return (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(grid.shape, grid.dtype))


def _native_call(kind, results, operands, n_out, padding, align_corners):
    # Leading dims are batch (vmap adds more); partitioned over them under a sharded jit.
    return _native.batched_call(
        _native.target(kind, operands[0].dtype), results, operands,
        in_core=(3,) * len(operands), out_core=(3,) * n_out,
        padding=np.int64(_PADDING_CODES[padding]), align_corners=np.int64(align_corners))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _grid_sample_native(x, grid, padding, align_corners):
    return _grid_sample_native_fwd(x, grid, padding, align_corners)[0]


def _grid_sample_native_fwd(x, grid, padding, align_corners):
    (y,) = _native_call("fwd", _native_fwd_results, (x, grid), 1, padding, align_corners)
    return y, (x, grid)


def _grid_sample_native_bwd(padding, align_corners, res, g):
    x, grid = res
    gx, ggrid = _native_call("bwd", _native_bwd_results, (x, grid, g.astype(x.dtype)), 2,
                             padding, align_corners)
    return gx, ggrid


_grid_sample_native.defvjp(_grid_sample_native_fwd, _grid_sample_native_bwd)


def _sample_native(x, grid, padding, align_corners):
    # The grid is float32 or float64 (``_grid_dtype``), so this is one of the kernel's dtypes;
    # bf16/fp16 images are sampled in float32, as on the JAX path.
    ct = jnp.promote_types(x.dtype, grid.dtype)
    return _grid_sample_native(x.astype(ct), grid.astype(ct), padding,
                               align_corners).astype(x.dtype)


@batch_dims(x=NHWC, grid="(..., Ho, Wo, 2)")
def grid_sample(
    x: jax.Array,
    grid: jax.Array,
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
    implementation: str = "auto",
) -> jax.Array:
    """Sample ``x`` at ``grid``, identical to ``torch.nn.functional.grid_sample`` (NHWC).

    Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015 (differentiable sampling,
    eqs. 3-7). All 18 combinations of ``mode``, ``padding_mode`` and ``align_corners`` follow
    PyTorch's CPU kernel, forward and backward (gradients w.r.t. ``x`` and ``grid``; nearest has
    a zero gradient w.r.t. the grid). The grid is used in float32 (at least) whatever ``x``'s
    dtype.

    Args:
      x: (N, H, W, C) image or feature map, floating (N: any leading dims, none included).
      grid: (N, Ho, Wo, 2) normalised (x, y) sample points, the same leading dims as ``x``;
        (-1, -1) is the top-left corner.
      mode: ``"bilinear"``, ``"nearest"`` (ties to even, as PyTorch) or ``"bicubic"``
        (cubic convolution, A = -0.75).
      padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``.
      align_corners: -1 and 1 are the centres (True) or the outer edges (False) of the corner
        pixels.
      implementation: ``"xla"``: gathers and a scatter-add in plain JAX (any backend).
        ``"native"``: a C++ XLA:CPU kernel (``attention_jax._native``, built with the local
        compiler at import, for the host's instruction set), bilinear only, computing in
        float32/float64, partitioned over the batch under a sharded ``jit``; ValueError if it
        is unavailable or inside ``attention_jax.native_disabled()``. ``"auto"``:
        ``"native"`` when compiling for the CPU, the mode is bilinear and the kernel is
        available (not inside ``native_disabled()``, the way to ``jax.export`` for the CPU),
        else ``"xla"`` (``jax.lax.platform_dependent`` picks per backend, so the same
        function runs and exports for GPU/TPU). Both give the same values and gradients to
        rounding.

    Returns:
      (N, Ho, Wo, C), dtype of ``x``.
    """
    fn = "grid_sample"
    # x and grid are checked (floating, layouts, same leading dims) by batch_dims: here
    # x (N, H, W, C), grid (N, Ho, Wo, 2).
    if 0 in x.shape[1:]:
        raise fail(fn, "x", "an image with H, W, C >= 1 (nothing to sample otherwise)",
                   f"shape {shape_of(x)}")
    check_choice(fn, "mode", mode, MODES)
    check_choice(fn, "padding_mode", padding_mode, PADDING_MODES)
    if not isinstance(align_corners, (bool, np.bool_)):
        raise fail(fn, "align_corners", "a bool", repr(align_corners))
    check_choice(fn, "implementation", implementation, ("auto", "xla", "native"))
    grid = grid.astype(_grid_dtype(grid))
    align = bool(align_corners)
    xla = lambda x, grid: _grid_sample(x, grid, mode, padding_mode, align)
    if implementation == "xla":
        return xla(x, grid)
    # The kernels were built and loaded at import (attention_jax._native): tracing only reads
    # that state, it never starts a build.
    if implementation == "native":
        if mode != "bilinear":
            raise fail(fn, "implementation", "'native' only with mode='bilinear'",
                       f"mode={mode!r}")
        if not _native.usable("grid_sample"):
            raise fail(fn, "implementation", "'auto' or 'xla': the native kernel is "
                       "unavailable", _native.status())
        return _sample_native(x, grid, padding_mode, align)
    if mode != "bilinear" or not _native.usable("grid_sample", warn=True):
        return xla(x, grid)
    native = lambda x, grid: _sample_native(x, grid, padding_mode, align)
    return jax.lax.platform_dependent(x, grid, cpu=native, default=xla)
